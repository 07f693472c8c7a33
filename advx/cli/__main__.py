import sys

from advx.cli import main

sys.exit(main())
