"""`python -m lmcor.sampling` is `lmcor sample`: the CLI answers --help and checks the flags
before the job's imports, then imports the job module under its own name, so its Gin
configurables are registered once."""
import sys

from lmcor.cli import main

sys.exit(main(["sample", *sys.argv[1:]]))
