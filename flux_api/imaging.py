"""Turning a generated image into bytes: PNG (with its parameters embedded), JPEG or WebP.

Only deterministic values are embedded, never timings, so the same request gives the same bytes.
"""

from __future__ import annotations

import io
import json

from .png import can_write, write_png


def encode_image(image, fmt: str, parameters: dict, png_compress_level: int = 1, jpeg_quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        text = json.dumps(parameters, sort_keys=True, ensure_ascii=False)
        if can_write(image):  # flux_api/png.py: the same pixels as Pillow's PNG, several times faster
            return write_png(image, {"parameters": text}, png_compress_level)
        from PIL.PngImagePlugin import PngInfo  # other modes (16-bit, palette): Pillow's own writer

        info = PngInfo()
        info.add_text("parameters", text)
        image.save(buf, "PNG", pnginfo=info, compress_level=png_compress_level)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=jpeg_quality)
    elif fmt == "webp":
        image.save(buf, "WEBP", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()
