"""The contract's limits and formats, defined once: the settings, the request schemas and the image
encoder all take them from here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 16  # FLUX's latents are 1/8 of the image, packed 2x2
ImageSide = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP)]

MAX_SEED = 2**32 - 1
MAX_STEPS = 100
MAX_LORA_NAME = 256  # characters
MAX_LORAS = 8  # in one request

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_OF_MEDIA_TYPE: dict[str, str] = {v: k for k, v in MEDIA_TYPES.items()} | {"image/jpg": "jpeg"}
