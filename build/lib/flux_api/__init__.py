"""flux_api: FLUX.1-dev text-to-image behind HTTP, as an FP4 service (:8000) and a BF16 service (:8001)."""

__version__ = "0.1.0"
