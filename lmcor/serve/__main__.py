"""`python -m lmcor.serve` is `lmcor serve`."""
import sys

from lmcor.serve.command import main

sys.exit(main())
