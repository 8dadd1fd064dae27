"""`python -m lmcor.serve` is `lmcor serve`."""
import sys

from lmcor.cli.serve_command import main

sys.exit(main())
