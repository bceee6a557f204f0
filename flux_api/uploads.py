"""Untrusted image bytes (a multipart upload or a base64 JSON field) in, a checked PIL image out, or an
InvalidImage (a 422 on the native API) whose message names the field and says what to do.

Pure functions: no FastAPI, no torch, no global Pillow state changed. The rules, in the order they apply:

- bytes: empty, or over `max_bytes`, is refused (for base64, before decoding it);
- base64: plain or a `data:image/...;base64,` URL; anything that is not base64 is refused;
- format: PNG, JPEG, WebP, BMP, TIFF (and MPO, the multi-picture JPEG phone cameras write, whose first,
  primary picture is used); only those plugins ever parse the bytes; anything else is refused, naming
  what it looks like (GIF, SVG, ...) and the accepted list;
- size: width*height from the header is checked against `max_pixels` BEFORE any decoding; Pillow's own
  DecompressionBombError/Warning (from its global limit) is turned into the same refusal;
- frames: an animation or a multi-page file (n_frames > 1) is refused;
- decoding: the whole image is decoded inside the guard (Pillow opens lazily), so a truncated or corrupt
  file is refused here, not later in the pipeline; ImageFile.LOAD_TRUNCATED_IMAGES is left False;
- EXIF orientation is applied (ImageOps.exif_transpose), with a note;
- init images become RGB, each conversion said in a note: CMYK, grayscale (L, 1), palette (P), 16-bit
  (I;16, scaled to 8 bits, not clipped), 32-bit integer (I) and float (F) (scaled from their range);
  any transparency (an alpha channel with a pixel below 255, or a palette/PNG transparency entry) is
  refused, since the area to edit is the mask's job; a fully opaque alpha channel is dropped with a note;
- masks must be exactly the image's size (after EXIF orientation) and come back as mode L, 255 = repaint:
  convention "alpha" (OpenAI's): repaint where the mask is fully transparent (alpha 0), so a mask without
  an alpha channel is refused; convention "white" (diffusers'): any mode, converted to L, white = repaint,
  grey levels kept (diffusers' inpaint pipeline binarizes at half: >= 128 repaints);
- a mask that repaints nothing (no alpha-0 pixel, or no pixel >= 128) is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from flux_api.errors import InvalidRequest

# Pillow's format ids: only these plugins ever parse the bytes. (JPEG's plugin also opens MPO files.)
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
ACCEPTED_LIST = "PNG, JPEG, WebP, BMP or TIFF (one frame)"

# Only to name a refused format in the message; these bytes are never given to a parser.
_SIGNATURES = ((b"GIF8", "GIF"), (b"%PDF", "PDF"), (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"),
               (b"qoif", "QOI"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
               (b"icns", "ICNS"), (b"DDS ", "DDS"))
_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}

_ORIENTATION = {2: "mirrored left to right", 3: "rotated 180°", 4: "flipped upside down",
                5: "transposed", 6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° counter-clockwise"}
_MODE_NAMES = {"1": "1-bit black and white (1)", "L": "grayscale (L)", "P": "palette (P)", "CMYK": "CMYK",
               "YCbCr": "YCbCr", "LAB": "LAB", "HSV": "HSV", "I": "32-bit integer (I)", "F": "32-bit float (F)"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}

_DATA_URL = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL | re.IGNORECASE)
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


class InvalidImage(InvalidRequest):
    """An uploaded or base64 image that cannot be used as sent; details name the field."""

    type = "invalid_image"

    def __init__(self, field: str, message: str):
        super().__init__(message, field=field)
        self.field = field


@dataclass(frozen=True)
class CheckedImage:
    image: Image.Image  # RGB (init images) or L (masks: 255 = repaint, 0 = keep)
    notes: tuple[str, ...]  # what was converted, said plainly ("image: converted from CMYK to RGB")


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit} ({n} bytes)"
    return f"{n} bytes"


def decode_base64_image(value: str, field: str, max_bytes: int) -> bytes:
    """Plain base64 or a data: URL (data:image/png;base64,...) -> the bytes, at most max_bytes."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidImage(field, f"{field} is empty; send the image as base64 (or a data:image/png;base64,... URL)")
    text = value.strip()
    if text[:5].lower() == "data:":
        m = _DATA_URL.fullmatch(text)
        params = [p.strip().lower() for p in m.group(2).split(";")] if m else []
        if not m or "base64" not in params:
            raise InvalidImage(field, f"{field} is a data URL that is not base64; send data:image/png;base64,...")
        media = m.group(1).strip().lower()
        if media and not media.startswith("image/"):
            raise InvalidImage(field, f"{field} is a data URL of {media!r}, not an image; send data:image/png;base64,...")
        text = m.group(3)
    # Line breaks (MIME-style base64) are allowed; anything else outside the alphabet is not.
    payload = re.sub(rb"[ \t\r\n]", b"", text.encode("ascii", "replace"))
    if not payload:
        raise InvalidImage(field, f"{field} is empty; send the image as base64")
    # Refuse by length before decoding: n base64 characters never hold more than 3n/4 bytes.
    if len(payload) > 4 * -(-max_bytes // 3):
        raise InvalidImage(field, f"{field} is larger than the limit of {_bytes(max_bytes)}; send a smaller image")
    payload += b"=" * (-len(payload) % 4) if len(payload) % 4 != 1 else b""  # padding is optional
    if not _BASE64.fullmatch(payload):
        raise InvalidImage(field, f"{field} is not valid base64 (only A-Z a-z 0-9 + / and = padding); "
                                  "send the image encoded with standard base64")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(field, f"{field} is not valid base64 (its length or padding is wrong); "
                                  "send the image encoded with standard base64") from None
    if not data:
        raise InvalidImage(field, f"{field} is empty; send the image as base64")
    if len(data) > max_bytes:
        raise InvalidImage(field, f"{field} is larger than the limit of {_bytes(max_bytes)}; send a smaller image")
    return data


def _looks_like(data: bytes) -> str | None:
    for prefix, name in _SIGNATURES:
        if data.startswith(prefix):
            return name
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12], "ISO media (MP4/HEIF)")
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")):
        return "SVG/XML"
    return None


# catch_warnings swaps the process-wide filter list for the length of the block: two threads inside it at
# once could restore each other's list and leave the error filter behind. The lock keeps it to one at a
# time; only the header is read under it.
_WARNINGS_LOCK = threading.Lock()


def _open_header(data: bytes) -> Image.Image:
    """Image.open with only the accepted plugins, reading the header alone. Pillow's own bomb check runs
    in there against its global limit and, below twice that limit, only warns: make the warning an error
    for this call, leaving the filters as they were."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)


def _too_many_pixels(field: str, size: str, max_pixels: int) -> InvalidImage:
    return InvalidImage(field, f"{field} has too many pixels ({size}); the limit is {max_pixels} pixels "
                               "(width x height); send a smaller image")


def _open(data: bytes, field: str, max_bytes: int, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """The checks every upload gets: bytes, format, pixels (from the header), frames, a full decode, EXIF."""
    if not data:
        raise InvalidImage(field, f"{field} is empty; send a {ACCEPTED_LIST} image")
    if len(data) > max_bytes:
        raise InvalidImage(field, f"{field} is {_bytes(len(data))}, over the limit of {_bytes(max_bytes)}; "
                                  "send a smaller image")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by someone else: truncated uploads would pass as images
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; uploads cannot be checked")
    notes: list[str] = []
    try:
        img = _open_header(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(field, "refused as a possible decompression bomb", max_pixels) from None
    except UnidentifiedImageError:
        kind = _looks_like(data)
        what = f"in {kind} format, which is not accepted" if kind else "not an image that can be read"
        raise InvalidImage(field, f"{field} is {what}; send a {ACCEPTED_LIST} image") from None
    except Exception as e:  # noqa: BLE001 - a malformed header raises anything (SyntaxError, struct.error...)
        raise InvalidImage(field, f"{field} is not an image that can be read ({type(e).__name__}: {e}); "
                                  f"send a {ACCEPTED_LIST} image") from None
    w, h = img.size
    if w * h > max_pixels:  # before decoding a single pixel: a tiny file can claim a huge size
        raise _too_many_pixels(field, f"{w}x{h} = {w * h}", max_pixels)
    if w == 0 or h == 0:
        raise InvalidImage(field, f"{field} is {w}x{h}, an image without pixels; send a real image")
    try:
        if img.format == "MPO":  # extra pictures of a camera JPEG (depth map, preview), not frames
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{field}: multi-picture JPEG (MPO); its first, primary picture was used")
            img.seek(0)
        elif getattr(img, "n_frames", 1) > 1:
            raise InvalidImage(field, f"{field} has {img.n_frames} frames (an animation or several pages); "
                                      "send a single still image")
        img.load()  # Pillow decodes lazily: a truncated or corrupt file must fail here, not in the pipeline
        orientation = img.getexif().get(0x0112)
        transposed = ImageOps.exif_transpose(img)
    except InvalidImage:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise InvalidImage(field, f"{field} could not be decoded: the file is truncated or corrupt "
                                  f"({type(e).__name__}: {e}); send the complete file") from None
    if orientation in _ORIENTATION:
        notes.append(f"{field}: EXIF orientation applied ({_ORIENTATION[orientation]})")
    return transposed, notes


def _to_8bit(img: Image.Image, field: str, notes: list[str]) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale -> L, scaled from their range (never clipped)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode in _SIXTEEN_BIT:
        lo, hi, what = 0.0, 65535.0, f"16-bit grayscale ({img.mode}) scaled to 8 bits"
    else:
        lo, hi = float(a.min()), float(a.max())
        for nominal in ((0.0, 1.0), (0.0, 255.0), (0.0, 65535.0)) if img.mode == "F" else ((0.0, 65535.0),):
            if nominal[0] <= lo and hi <= nominal[1]:
                lo, hi = nominal
                break
        what = f"{_MODE_NAMES[img.mode]} values {lo:g}..{hi:g} scaled to 8 bits"
    a = np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)
    notes.append(f"{field}: {what}")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def _with_alpha(img: Image.Image, field: str) -> Image.Image | None:
    """The image as RGBA when it has any transparency (alpha channel or transparency entry), else None."""
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return None
    try:
        return img.convert("RGBA")
    except (ValueError, OSError):  # e.g. a 16-bit grayscale PNG with a transparency entry
        raise InvalidImage(field, f"{field} has transparency in mode {img.mode}, which cannot be read; "
                                  "send an 8-bit PNG") from None


def read_init_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> CheckedImage:
    """An init image for image-to-image or inpainting: opaque, RGB, conversions said in the notes."""
    img, notes = _open(data, field, max_bytes, max_pixels)
    rgba = _with_alpha(img, field)
    if rgba is not None:
        if rgba.getchannel("A").getextrema()[0] < 255:
            raise InvalidImage(field, f"{field} has transparent pixels; send an opaque image and the area to "
                                      "edit as a mask")
        what = "alpha channel" if img.mode in _ALPHA_MODES else "transparency entry"
        notes.append(f"{field}: fully opaque {what} dropped")
        img = rgba.convert("RGB") if img.mode not in ("LA", "La") else img.convert("L")
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        img = _to_8bit(img, field, notes)
    if img.mode != "RGB":
        name = _MODE_NAMES.get(img.mode, img.mode)
        try:
            img = img.convert("RGB")
        except (ValueError, OSError):
            raise InvalidImage(field, f"{field} is in mode {name}, which cannot be converted to RGB; "
                                      "send an RGB or grayscale image") from None
        notes.append(f"{field}: converted from {name} to RGB")
    return CheckedImage(img, tuple(notes))


def read_mask(data: bytes, field: str, size: tuple[int, int], convention: Literal["alpha", "white"],
              max_bytes: int, max_pixels: int) -> CheckedImage:
    """A mask of exactly `size` (width, height) -> mode L, 255 = repaint, 0 = keep."""
    img, notes = _open(data, field, max_bytes, max_pixels)
    if img.size != tuple(size):
        raise InvalidImage(field, f"{field} is {img.width}x{img.height} but the image is {size[0]}x{size[1]}; "
                                  "send a mask of the same size as the image")
    if convention == "alpha":
        rgba = _with_alpha(img, field)
        if rgba is None:
            raise InvalidImage(field, f"{field} has no alpha channel; the area to edit is where the mask is "
                                      "fully transparent (alpha 0): send a PNG with transparency")
        mask = rgba.getchannel("A").point(lambda a: 255 if a == 0 else 0)
        if mask.getextrema()[1] == 0:
            opaque = "is fully opaque" if rgba.getchannel("A").getextrema()[0] == 255 else "has no fully transparent pixel"
            raise InvalidImage(field, f"{field} {opaque}, so it marks nothing to edit; make the area to edit "
                                      "fully transparent (alpha 0)")
        return CheckedImage(mask, tuple(notes))
    if convention != "white":
        raise ValueError(f"unknown mask convention {convention!r}")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        notes.append(f"{field}: transparency ignored (white marks the area to repaint)")
        img = _with_alpha(img, field).convert("RGB")
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        img = _to_8bit(img, field, notes)
    if img.mode != "L":
        name = _MODE_NAMES.get(img.mode, img.mode)
        try:
            img = img.convert("RGB").convert("L") if img.mode not in ("1", "RGB") else img.convert("L")
        except (ValueError, OSError):
            raise InvalidImage(field, f"{field} is in mode {name}, which cannot be converted to grayscale; "
                                      "send a grayscale or RGB image") from None
        notes.append(f"{field}: converted from {name} to grayscale (L)")
    if img.getextrema()[1] < 128:  # the pipeline binarizes at half: nothing below 128 is repainted
        raise InvalidImage(field, f"{field} repaints nothing: no pixel is white or light (>= 128 of 255); "
                                  "white marks the area to repaint, black the area to keep")
    return CheckedImage(img, tuple(notes))
