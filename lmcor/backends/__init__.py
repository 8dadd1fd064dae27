"""LLM backends for the sampling job: JAX model, OpenAI-compatible HTTP, precomputed files."""
