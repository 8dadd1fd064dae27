"""Serving: `lmcor serve`, an OpenAI-compatible proxy that corrects any LLM's output
(docs/serving.md).

Per request the upstream is asked for its greedy output and `num_candidates - 1` samples (two
concurrent calls), the corrector input is built exactly as in training, and concurrent requests
are beam-decoded together by a micro-batcher (one jitted call per batch, padded to one of the
corrector's fixed decode shapes and output lengths, all compiled before the server takes a
request). The server listens at once and loads and compiles in the background: /healthz
answers 503 "warming_up" with the compile progress until then. Standard library HTTP server;
no new dependencies. No module here imports JAX or TensorFlow at import time: the corrector
is loaded when the server starts.

Modules, each importing only those above it:
  * `batching` - one thread that collects queued requests into batches and runs them;
  * `upstream` - the LLM behind the proxy: an OpenAI-compatible endpoint or Gemma in JAX;
  * `prometheus` - Prometheus counters and histograms rendered for /metrics;
  * `decoder`  - the corrector's beam search at fixed decode shapes and output lengths;
  * `batcher`  - the micro-batcher that decodes concurrent requests together;
  * `api`      - the OpenAI request checks and the reply and error bodies;
  * `app`      - `ServeApp`: start-up and warm-up state, and one request from body to reply;
  * `server`   - the HTTP handler and server in front of a `ServeApp`.
The command's flags and `main` are lmcor.cli.serve_command; `python -m lmcor.serve` runs it.
"""
