"""``python benchmarks/bench ...`` or, from the repository root, ``python -m benchmarks.bench ...``."""

import sys
from pathlib import Path

if not __package__:  # run as a folder: its own path comes first and would shadow modules of the same names
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from benchmarks.bench.cli import main  # noqa: E402

sys.exit(main())
