"""``python -m flame``: the ``flame`` command line."""

import sys

from flame.cli import main

sys.exit(main())
