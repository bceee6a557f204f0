#!/usr/bin/env python3
"""Thin wrapper: `python scripts/bench.py ...` is `python -m flux_api.bench ...` (see its --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_api.bench import main  # noqa: E402

if __name__ == "__main__":
    main()
