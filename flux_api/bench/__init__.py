"""The benchmark, `python -m flux_api.bench` (its --help says how to run it).

    cli.py      the command: options, the run over the targets, the JSON files
    targets.py  target syntax (`fp4:bnb-fp4+compile+replicas`) and the settings each option sets
    measure.py  one service through HTTP: latency, first request at a new size, images/min, LoRA check
    stock.py    stock diffusers, the baseline, in a child process
    images.py   the natural test image, PSNR, encoding costs
    report.py   the table
The full-size random model it runs on comes from flux_api.random_model.
"""

from .cli import main, run
from .images import image_psnr, natural_image
from .targets import parse_target

__all__ = ["image_psnr", "main", "natural_image", "parse_target", "run"]
