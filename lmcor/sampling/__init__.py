"""Sampling: the job that few-shot prompts an LLM for a candidate pool (greedy + samples per
input), with the prompts and the LLM backends it calls; docs/sampling.md.

Modules:
  * `prompts`  - few-shot templates per task, demonstration choice and output clean-up;
  * `backends` - the LLMs a job can sample: a JAX model, an OpenAI-compatible HTTP endpoint,
                 or candidates already computed;
  * `job`      - `lmcor sample`: shards, resume, validation and the pool manifest;
    `python -m lmcor.sampling` runs it.
"""
