"""``python -m attnscope.cli ...`` is the ``attnscope`` command."""

import sys

from . import main

sys.exit(main())
