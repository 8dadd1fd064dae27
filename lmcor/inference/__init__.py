"""Inference: a trained corrector's MODEL_DIR (or released adapter folder) as a `Corrector` that
turns pool records into corrected text, for evaluation and serving; and its export.

Modules, each importing only those above it:
  * `settings`  - `corrector_settings.*` (beam, limits) and the fixed decode shapes they give;
  * `run_dir`   - the folder's Gin config, the checks made before loading it, its trained params;
  * `corrector` - `Corrector`: input text, tokens, one padded beam-search call;
  * `export`    - a trained Gemma corrector as a HF checkpoint or a released adapter folder.

Nothing is imported here, so `lmcor export --help` stays instant.
"""
