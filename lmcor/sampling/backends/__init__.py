"""The sampling stage's LLM backends, one per module:
  * `base`        - `Backend`, `Request`, `SamplingParams` and `BackendError`;
  * `jax_lm`      - a JAX language model in this process;
  * `http`        - an OpenAI-compatible HTTP endpoint;
  * `precomputed` - candidates already written (a pool or text files)."""
