import sys

from lsm_core.cli import main

sys.exit(main())
