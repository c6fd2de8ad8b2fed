"""``python -m attnscope.cli ...`` is the ``attnscope`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
