"""SeqIO tasks and mixtures for lmcor, one module per dataset; importing registers them.

    import lmcor.tasks  # noqa: F401  (registers e2e_*, jfleg_*, wmt*_*, xsum_*, conll14_*)

See docs/tasks.md for the task names, splits, sizes and Gin knobs.
"""
from lmcor.tasks import conll14, e2e, jfleg, wmt, xsum  # noqa: F401
from lmcor.tasks.common import register_mixture, register_pool_task  # noqa: F401
