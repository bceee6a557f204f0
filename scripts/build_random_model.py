#!/usr/bin/env python3
"""Thin wrapper: `python scripts/build_random_model.py ...` is `python -m flux_api.random_model ...`.

    python scripts/build_random_model.py --size full --out /tmp/flux-full --device cuda [--lora-out DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_api.random_model import main  # noqa: E402

if __name__ == "__main__":
    main()
