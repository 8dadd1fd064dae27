"""The model definitions: pure Flax modules (no I/O, no globals) and their decode adapters, used
by the LLM backend that samples candidate pools, by the trainer and by decoding and serving.

Modules:
  * `partitioning`   - the one table from logical axis names to mesh axes, and the mesh;
  * `xla_tuning`     - the ops whose form was picked by timing on XLA CPU (f32-accumulating dots,
                       the int8 matmul and its layout, the LoRA product, the KV-cache write);
  * `layers`         - RMSNorm, dense (float, int8 and LoRA), embedding, gated MLP, attention;
  * `t5`             - T5 v1.1 encoder-decoder and its decode adapter `T5LM`;
  * `gemma`          - Gemma 3 text decoder, its KV cache, int8 params and decode adapter `GemmaLM`;
  * `vocab_widening` - a task-vocabulary `GemmaLM` widened with base-embedding rows for its inputs;
  * `gin_presets`    - the presets' Gin names (`gemma_config`, `t5_config`), the one Gin-aware
                       module here, so that importing a model registers nothing.
"""
