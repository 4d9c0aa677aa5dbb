"""`python -m cnndsl` runs the command line."""

import sys

from cnndsl.cli import main

sys.exit(main())
