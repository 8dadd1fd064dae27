"""`python -m lmcor.cli <command> ...` is `lmcor <command> ...`."""
import sys

from lmcor.cli import main

sys.exit(main())
