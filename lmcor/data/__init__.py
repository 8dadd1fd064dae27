"""Data stage: candidate pools on disk, pool records -> SeqIO corrector examples, vocabularies.

- `pool_schema`: the pool record schema and `PoolError` (file, line and field of a bad record).
- `pool`: sharded JSONL pools: streamed reading, all-or-nothing writing, counts, release checks.
- `text_files`: UTF-8 text read line by line, a bad byte named by file, line and column.
- `importers`: the shared evaluation sets (E2E, JFLEG, WMT) as pool records.
- `paragraphs`: paragraph-length records joined from a document's sentence-level records.
- `pool_release`: the released pools under data/pools/ and their manifest.
- `tfds_pool`: a TFDS builder turning pool shards into TFRecord splits.
- `corrector_input`: a record's corrector input text (candidates, template, token budget); no TF.
- `preprocessors`: the SeqIO preprocessors that build corrector examples from raw pool features.
- `feature_converters`: the decoder-only (prefix-LM) feature converter for Gemma correctors.
- `vocab`: the task SentencePiece vocabulary and Gemma 3's.
- `task_vocab`: the subset of a large vocabulary that a task's data uses.
"""
