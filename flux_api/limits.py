"""The contract's limits and formats, defined once: the settings, the request schemas and the image
encoder all take them from here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field


def _integral_number(v):
    # JSON has one number type: 10.0 is the integer 10 (as JSON Schema says), 10.5 is not, and under
    # the strict request models neither `true` nor "10" is a number at all.
    return int(v) if isinstance(v, float) and v.is_integer() else v


def json_int(**constraints):
    """An integer field with `constraints` (ge, le, multiple_of) that takes 10.0 as 10. The constraints
    come before the validator, so the JSON schema shows them as minimum/maximum/multipleOf."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral_number)]


MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 16  # FLUX's latents are 1/8 of the image, packed 2x2
ImageSide = json_int(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP)


def valid_side(v: int) -> bool:
    """What ImageSide accepts, for a size that comes from an image rather than a field."""
    return MIN_SIDE <= v <= MAX_SIDE and v % SIDE_STEP == 0

MAX_SEED = 2**32 - 1
MAX_IMAGES = 4  # in one request
MAX_STEPS = 100
MAX_LORA_NAME = 256  # characters
MAX_LORAS = 8  # in one request

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_OF_MEDIA_TYPE: dict[str, str] = {v: k for k, v in MEDIA_TYPES.items()} | {"image/jpg": "jpeg"}
