"""``python -m xcfg``: the same as the ``xcfg`` command."""

import sys

from ._cli import main

sys.exit(main())
