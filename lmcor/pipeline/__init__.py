"""The pipeline: one table's stages (sample, train, export, evaluate, report) run in order as
separate commands, resuming from what is on disk; `lmcor pipeline` and `lmcor quickstart`.

Modules, each importing only those above it:
  * `stages` - one stage as its own `python -m lmcor.cli <command>` process, DONE markers, timings;
  * `table`  - the `pipeline` configurable (Gin: `pipeline.*`): which stages a table runs, and
               each stage's flags.
"""
