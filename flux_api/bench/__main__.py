"""`python -m flux_api.bench`: see flux_api/bench/cli.py or --help."""

from .cli import main

main()
