"""`python -m licm ...` = `licm ...` (for machines where the console script is not installed)."""
import sys

from licm.cli import main

sys.exit(main())
