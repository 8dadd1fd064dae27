"""Importers (HF safetensors, GGUF) and Orbax save/restore of lmcor params."""
