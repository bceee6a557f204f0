"""Images for the benchmark: a natural test image, PSNR between two images, and what encoding costs."""

from __future__ import annotations

import base64
import io
import time


def natural_image(px: int):
    """A natural-looking test image (smooth gradients, soft shapes, mild grain): PNG's typical case,
    where random-weight model output (noise) is its worst."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:px, 0:px] / px
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.4 + 0.3 * y, 0.6 - 0.3 * x * y], -1)
    img = Image.fromarray((rgb * 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for i in range(12):
        c = int(px * (0.1 + 0.07 * i))
        d.ellipse([c - px // 10, c // 2, c + px // 8, c // 2 + px // 6], fill=(40 + 15 * i, 90, 200 - 12 * i))
    img = img.filter(ImageFilter.GaussianBlur(px / 200))
    grain = np.random.default_rng(0).normal(0, 3, (px, px, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype("uint8"))


def encoding_costs(images: dict) -> dict:
    """ms per format/level on each image (median of 3), the service's encoder and Pillow's PNG."""
    from ..imaging import encode_image

    def pillow_png(img) -> bytes:  # what the service paid before flux_api/png.py: Pillow's own PNG, level 1
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    encoders = {f"{fmt}{level or ''}": (lambda img, fmt=fmt, level=level:
                                        encode_image(img, fmt, {"p": 1}, png_compress_level=level or 1))
                for fmt, level in (("png", 1), ("png", 6), ("jpeg", None), ("webp", None))}
    encoders["pillow_png1"] = pillow_png
    out = {}
    for label, img in images.items():
        for key, encode in encoders.items():
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                data = encode(img)
                ts.append((time.perf_counter() - t) * 1e3)
            out.setdefault(label, {})[key] = {"ms": round(sorted(ts)[1], 1), "kib": round(len(data) / 1024)}
    return out


def image_psnr(a, b) -> float | None:
    """PSNR in dB between two RGB images (PIL or arrays); inf when identical, None when sizes differ."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def decode_b64(data: str):
    """A base64 image (the API's `image` field) as a PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data)))


def psnr(a_b64: str, b_b64: str) -> float | None:
    a, b = (decode_b64(x).convert("RGB") for x in (a_b64, b_b64))
    return image_psnr(a, b)
