"""``python -m deqrobust``: the ``deqrobust`` command, for environments without its script on PATH."""

import sys

from deqrobust.cli import main

sys.exit(main())
