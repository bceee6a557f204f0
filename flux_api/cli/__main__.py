"""`python -m flux_api.cli ...`: the same as the `flux-api` console script."""

import sys

from . import main

sys.exit(main())
