"""Tasks: the SeqIO tasks and mixtures that turn a dataset and its candidate pools into
corrector examples (source + candidates -> target), one module per dataset; importing the
package registers them. It is installed as `lmcor.tasks` (setup.py package_dir).

    import lmcor.tasks  # noqa: F401  (registers e2e_*, jfleg_*, wmt*_*, xsum_*, conll14_*)

Modules:
  * `common`  - pool overrides, the hold-out split, and task/mixture registration (a name
                registered twice raises);
  * `e2e`, `jfleg`, `wmt`, `xsum`, `conll14` - one dataset each: its records and tasks.

See docs/tasks.md for the task names, splits, sizes and Gin knobs.
"""
from lmcor.tasks import conll14, e2e, jfleg, wmt, xsum  # noqa: F401
from lmcor.tasks.common import register_mixture, register_pool_task  # noqa: F401
