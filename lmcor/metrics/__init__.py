"""Text metrics for every stage that scores outputs: the SeqIO tasks' metric functions (and so
training-time validation), `lmcor evaluate`, `lmcor score` and reranking.

Modules, each importing only those above it:
  * `scores`    - BLEU, chrF, TER, ROUGE, GLEU and their per-segment statistics;
  * `bootstrap` - percentile intervals and paired bootstrap tests from those statistics;
  * `seqio_fns` - the SeqIO metric functions tasks declare, and the table metrics they stand for.

The public names of all three are here too: `from lmcor import metrics; metrics.bleu(...)`.
"""
from lmcor.metrics.bootstrap import bootstrap_ci, paired_bootstrap
from lmcor.metrics.scores import (ROUGE_TYPES, RefStreams, bleu, bleu_tokenizers, chrf, gleu,
                                  rouge, sufficient_stats, ter)
from lmcor.metrics.seqio_fns import (TABLE_METRICS, seqio_bleu, seqio_chrf, seqio_gleu,
                                     seqio_interval, seqio_rouge, seqio_ter, table_metrics)

__all__ = ["ROUGE_TYPES", "RefStreams", "TABLE_METRICS", "bleu", "bleu_tokenizers",
           "bootstrap_ci", "chrf", "gleu", "paired_bootstrap", "rouge", "seqio_bleu",
           "seqio_chrf", "seqio_gleu", "seqio_interval", "seqio_rouge", "seqio_ter",
           "sufficient_stats", "table_metrics", "ter"]
