"""``python -m advx`` (and ``torchrun -m advx``): the command line."""

import sys

from advx.cli import main

sys.exit(main())
