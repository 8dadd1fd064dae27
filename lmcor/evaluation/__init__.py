"""Evaluation: the comparison tables of a task's test pool (LLM greedy, sample, MBR reranking,
oracle and the trained correctors), their scores with bootstrap intervals and paired tests,
and the reports and published tables built from them; docs/evaluation.md.

Scores, intervals and paired tests are lmcor.metrics'; a dataset's metrics are the ones its
task registration declares (tasks/<dataset>.py).

Modules:
  * `inputs`        - what an evaluation reads (EVAL_DIR, pool or task, correctors), checked first;
  * `rerank`        - the pool's rows that need no trained model (greedy, sample, MBR, oracle);
  * `breakdowns`    - a table's main metric per group of inputs (E2E by attribute count);
  * `predictions`   - EVAL_DIR/predictions/: one file per row, keyed and reused on reruns;
  * `results_table` - results.json as the Markdown table;
  * `evaluate`      - `lmcor evaluate`: runs the rows and scores them;
  * `published`     - the published tables (docs/results/*.json) and the Markdown made from them;
  * `report`        - `lmcor report`: every evaluation of a run as tables and plots.
"""
