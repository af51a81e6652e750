"""``python -m saft_cli``: the same as the ``saft`` command."""

import sys

from .main import main

sys.exit(main())
