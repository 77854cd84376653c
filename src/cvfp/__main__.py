"""``python -m cvfp`` (and ``torchrun ... -m cvfp``): the command line."""

import sys

from cvfp.cli import main

sys.exit(main())
