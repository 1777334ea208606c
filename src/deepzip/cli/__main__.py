"""``python -m deepzip.cli``: the ``deepzip`` command."""

import sys

from deepzip.cli import main

sys.exit(main())
