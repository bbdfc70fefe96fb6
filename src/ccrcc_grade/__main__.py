"""`python -m ccrcc_grade` runs the CLI (so `torchrun -m ccrcc_grade train ...` works)."""

import sys

from ccrcc_grade.cli import main

sys.exit(main())
