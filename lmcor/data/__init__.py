"""Candidate pools: schema, I/O, importers, SeqIO preprocessing and vocabularies."""
