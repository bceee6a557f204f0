"""flux_api/uploads.py: every rule on untrusted image bytes, with real files of each kind made here by
Pillow (nothing downloaded). Each refusal test fails if its rule is taken out."""

import base64
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from flux_api.errors import InvalidRequest
from flux_api.uploads import CheckedImage, InvalidImage, decode_base64_image, read_init_image, read_mask

MB = 2**20
MAX_PIXELS = 1024 * 1024


def enc(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(w=8, h=6) -> Image.Image:
    a = np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)
    return Image.fromarray(a, "RGB")


def init(data: bytes, max_bytes=MB, max_pixels=MAX_PIXELS) -> CheckedImage:
    return read_init_image(data, "image", max_bytes, max_pixels)


def refused(fn, *args, match: str, **kw) -> InvalidImage:
    with pytest.raises(InvalidImage, match=match) as e:
        fn(*args, **kw)
    assert e.value.details == {"field": e.value.field} and e.value.field in e.value.message
    return e.value


def png_with_size(w: int, h: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims w x h (8-bit grayscale), with the given compressed pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def with_orientation(img: Image.Image, orientation: int, fmt="JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return enc(img, fmt, exif=exif)


# --- the error type -------------------------------------------------------------------------------


def test_invalid_image_is_an_invalid_request_of_its_own_type():
    e = InvalidImage("mask", "mask is bad")
    assert isinstance(e, InvalidRequest) and e.type == "invalid_image" and e.details == {"field": "mask"}


# --- base64 ---------------------------------------------------------------------------------------


def test_base64_plain_data_url_line_breaks_and_missing_padding():
    data = enc(rgb())
    b64 = base64.b64encode(data).decode()
    assert decode_base64_image(b64, "init_image", MB) == data
    assert decode_base64_image(f"data:image/png;base64,{b64}", "init_image", MB) == data
    assert decode_base64_image(f"DATA:image/png;BASE64,{b64}", "init_image", MB) == data
    assert decode_base64_image("\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)), "init_image", MB) == data
    assert decode_base64_image(base64.b64encode(b"abcd").decode().rstrip("="), "f", MB) == b"abcd"


@pytest.mark.parametrize("value, match", [
    ("", "init_image is empty"), ("  \n", "init_image is empty"), ("data:image/png;base64,", "init_image is empty"),
    ("not base64!", "init_image is not valid base64"), ("aGVsbG8=é", "init_image is not valid base64"),
    ("a", "init_image is not valid base64"), ("ab=c", "init_image is not valid base64"),
    ("data:image/png,iVBORw0KGgo=", "init_image is a data URL that is not base64"),
    ("data:text/plain;base64,aGVsbG8=", "init_image is a data URL of 'text/plain', not an image"),
])
def test_base64_refusals(value, match):
    refused(decode_base64_image, value, "init_image", MB, match=match)


def test_base64_over_the_limit_is_refused_before_decoding_and_the_limit_itself_passes(monkeypatch):
    assert decode_base64_image(base64.b64encode(b"x" * 1000).decode(), "image", 1000) == b"x" * 1000
    e = refused(decode_base64_image, base64.b64encode(b"x" * 1001).decode(), "image", 1000,
                match="image is larger than the limit of 1000 bytes")
    assert "smaller" in e.message
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: pytest.fail("decoded a payload over the limit"))
    refused(decode_base64_image, "QUFB" * 10_000, "image", 1000, match="larger than the limit")


# --- what is an image -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                     ("BMP", {}), ("TIFF", {})])
def test_accepted_formats_come_back_as_rgb_without_notes(fmt, kw):
    out = init(enc(rgb(), fmt, **kw))
    assert out.image.mode == "RGB" and out.image.size == (8, 6) and out.notes == ()
    if fmt != "JPEG":  # lossless: the very pixels
        assert np.array_equal(np.asarray(out.image), np.asarray(rgb()))


def test_empty_and_over_max_bytes():
    refused(init, b"", match="image is empty")
    data = enc(rgb())
    assert init(data, max_bytes=len(data)).image.size == (8, 6)
    refused(init, data, max_bytes=len(data) - 1, match=f"image is {len(data)} bytes, over the limit of {len(data) - 1}")


def truncated(fmt):
    data = enc(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize("data, match", [
    (np.random.default_rng(0).bytes(4096), "image is not an image that can be read"),
    (b"hello, this is a text file\n" * 20, "image is not an image that can be read"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
     "image is in SVG/XML format, which is not accepted"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="8" height="8"/></svg>', "in SVG/XML format"),
    (enc(rgb(), "GIF"), "image is in GIF format, which is not accepted; send a PNG, JPEG, WebP, BMP or TIFF"),
    (enc(rgb(), "ICO"), "image is in ICO format"),
    (b"\x89PNG\r\n\x1a\n", "not an image that can be read"),
])
def test_not_an_accepted_image(data, match):
    refused(init, data, match=match)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_file_is_refused_although_pillow_opens_it_lazily(fmt):
    data = truncated(fmt)
    Image.open(io.BytesIO(data))  # the header alone reads fine: only a full decode finds the cut
    refused(init, data, match="image could not be decoded: the file is truncated or corrupt")
    refused(read_mask, data, "mask", (64, 64), "white", MB, MAX_PIXELS, match="mask could not be decoded")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_truncated_webp_is_refused_too():  # Pillow decodes WebP as it opens it
    refused(init, truncated("WEBP"), match="image is not an image that can be read")


def test_the_check_will_not_run_where_truncated_images_are_let_through(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        init(truncated("PNG"))


# --- too many pixels ------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(monkeypatch):
    # A real one: 8000x8000 pixels of zeros (64 MB decoded) in a file of about 64 KB.
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" * 8001 * 500) for _ in range(16)) + z.flush()
    bomb = png_with_size(8000, 8000, idat)
    assert len(bomb) < 100_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a bomb"))
    e = refused(init, bomb, match=r"image has too many pixels \(8000x8000 = 64000000\); the limit is 1048576 pixels")
    assert "smaller" in e.message
    refused(read_mask, bomb, "mask", (8000, 8000), "white", MB, MAX_PIXELS, match="mask has too many pixels")


def test_max_pixels_itself_passes():
    assert init(enc(rgb(16, 16)), max_pixels=256).image.size == (16, 16)
    refused(init, enc(rgb(16, 16)), max_pixels=255, match="too many pixels")


@pytest.mark.parametrize("side, pillow_raises", [(10_000, "a warning"), (20_000, "an error")])
def test_pillows_own_bomb_check_becomes_the_same_refusal_without_changing_global_filters(side, pillow_raises):
    before = list(warnings.filters)
    refused(init, png_with_size(side, side), max_pixels=10**12, match="image has too many pixels.*decompression bomb")
    assert warnings.filters == before


# --- frames ---------------------------------------------------------------------------------------


def frames(n=3):
    return [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(n)]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])  # APNG, animated WebP, multi-page TIFF
def test_several_frames_are_refused(fmt):
    first, *rest = frames()
    data = enc(first, fmt, save_all=True, append_images=rest)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    refused(init, data, match="image has 3 frames .*send a single still image")


def test_a_multi_picture_jpeg_uses_its_primary_picture_with_a_note():
    first, *rest = frames(2)
    out = init(enc(first, "MPO", save_all=True, append_images=rest))
    assert out.notes == ("image: multi-picture JPEG (MPO); its first, primary picture was used",)
    assert out.image.getpixel((4, 4))[0] < 10


# --- modes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("img, fmt, note", [
    (Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG", "image: converted from CMYK to RGB"),
    (Image.new("L", (8, 6), 100), "PNG", "image: converted from grayscale (L) to RGB"),
    (Image.new("1", (8, 6), 1), "PNG", "image: converted from 1-bit black and white (1) to RGB"),
    (Image.new("RGB", (8, 6), (200, 10, 10)).quantize(4), "PNG", "image: converted from palette (P) to RGB"),
    (Image.new("YCbCr", (8, 6), (128, 128, 128)), "JPEG", None),  # JPEG stores YCbCr; Pillow hands back RGB
])
def test_modes_converted_to_rgb_with_a_note(img, fmt, note):
    out = init(enc(img, fmt))
    assert out.image.mode == "RGB" and out.image.size == (8, 6)
    assert out.notes == ((note,) if note else ())
    if img.mode == "CMYK":
        r, g, b = out.image.getpixel((3, 3))
        assert r > 200 and g < 50 and b < 50


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    out = init(enc(Image.fromarray(ramp), "PNG"))
    assert Image.open(io.BytesIO(enc(Image.fromarray(ramp), "PNG"))).mode == "I;16"
    a = np.asarray(out.image)[..., 0].astype(int)
    assert np.abs(a - np.round(ramp / 257)).max() <= 1  # clipping would leave almost every pixel at 255
    assert out.notes == ("image: 16-bit grayscale (I;16) scaled to 8 bits", "image: converted from grayscale (L) to RGB")


def test_32_bit_integer_and_float_are_scaled_from_their_range():
    i = np.linspace(0, 65535, 64).astype(np.int32).reshape(8, 8)
    out = init(enc(Image.fromarray(i), "TIFF"))
    assert np.asarray(out.image)[..., 0].max() == 255 and np.asarray(out.image)[0, 1, 0] == round(i[0, 1] / 257)
    assert out.notes[0] == "image: 32-bit integer (I) values 0..65535 scaled to 8 bits"
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = init(enc(Image.fromarray(f), "TIFF"))
    assert np.asarray(out.image)[..., 0].max() == 255 and np.asarray(out.image)[..., 0].min() == 0
    assert out.notes[0] == "image: 32-bit float (F) values 0..1 scaled to 8 bits"


@pytest.mark.parametrize("orientation, size, note", [(6, (6, 8), "rotated 90° clockwise"), (3, (8, 6), "rotated 180°"),
                                                     (8, (6, 8), "rotated 90° counter-clockwise")])
def test_exif_orientation_is_applied_with_a_note(orientation, size, note):
    img = Image.new("RGB", (8, 6), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 2, 2))  # a white corner, top left as stored
    out = init(with_orientation(img, orientation))
    assert out.image.size == size and out.notes == (f"image: EXIF orientation applied ({note})",)
    corner = {6: (size[0] - 1, 0), 3: (size[0] - 1, size[1] - 1), 8: (0, size[1] - 1)}[orientation]
    assert out.image.getpixel(corner)[0] > 200


# --- alpha in an init image -----------------------------------------------------------------------


def rgba(alpha_min=255) -> Image.Image:
    img = rgb().convert("RGBA")
    img.putpixel((2, 2), (1, 2, 3, alpha_min))
    return img


@pytest.mark.parametrize("img", [rgba(254), rgba(0), rgba(0).convert("LA")], ids=["RGBA 254", "RGBA 0", "LA"])
def test_transparent_pixels_in_an_init_image_are_refused(img):
    refused(init, enc(img), match="image has transparent pixels; send an opaque image and the area to edit as a mask")


def test_a_palette_transparency_entry_counts_as_alpha():
    p = Image.new("P", (8, 6), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    refused(init, enc(p, transparency=1), match="image has transparent pixels")
    out = init(enc(p, transparency=7))  # an entry no pixel uses: nothing is transparent
    assert out.notes == ("image: fully opaque transparency entry dropped",) and out.image.getpixel((1, 1)) == (255, 0, 0)


def test_an_rgb_png_transparency_colour_counts_as_alpha():
    refused(init, enc(Image.new("RGB", (8, 6), (9, 9, 9)), transparency=(9, 9, 9)), match="transparent pixels")


def test_a_fully_opaque_alpha_channel_is_dropped_with_a_note():
    out = init(enc(rgba(255)))
    assert out.image.mode == "RGB" and out.notes == ("image: fully opaque alpha channel dropped",)
    assert np.array_equal(np.asarray(out.image), np.asarray(rgba(255).convert("RGB")))
    out = init(enc(Image.new("LA", (8, 6), (70, 255))))
    assert out.notes == ("image: fully opaque alpha channel dropped", "image: converted from grayscale (L) to RGB")
    assert out.image.getpixel((0, 0)) == (70, 70, 70)


# --- masks ----------------------------------------------------------------------------------------


def mask(data, convention, size=(8, 6)):
    return read_mask(data, "mask", size, convention, MB, MAX_PIXELS)


def test_alpha_mask_repaints_where_fully_transparent():
    m = Image.new("RGBA", (8, 6), (0, 0, 0, 255))
    m.paste((0, 0, 0, 0), (0, 0, 4, 3))
    m.putpixel((7, 5), (0, 0, 0, 1))  # partly transparent: kept, as in OpenAI's convention
    out = mask(enc(m), "alpha")
    a = np.asarray(out.image)
    assert out.image.mode == "L" and out.notes == ()
    assert (a[:3, :4] == 255).all() and a.sum() == 255 * 12


def test_alpha_mask_without_alpha_fully_opaque_or_without_a_transparent_pixel_is_refused():
    refused(mask, enc(Image.new("RGB", (8, 6), (255, 255, 255))), "alpha",
            match="mask has no alpha channel; the area to edit is where the mask is fully transparent")
    refused(mask, enc(Image.new("RGBA", (8, 6), (0, 0, 0, 255))), "alpha",
            match="mask is fully opaque, so it marks nothing to edit")
    refused(mask, enc(Image.new("RGBA", (8, 6), (0, 0, 0, 3))), "alpha", match="mask has no fully transparent pixel")


def test_alpha_mask_from_a_palette_transparency_entry():
    p = Image.new("P", (8, 6), 0)
    p.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    out = mask(enc(p, transparency=1), "alpha")
    assert np.asarray(out.image).sum() == 255 and out.image.getpixel((1, 1)) == 255


def test_white_mask_keeps_grey_levels_from_any_mode():
    m = Image.new("L", (8, 6), 0)
    m.paste(255, (0, 0, 4, 6))
    m.putpixel((7, 0), 200)
    out = mask(enc(m), "white")
    assert out.image.mode == "L" and out.notes == () and np.array_equal(np.asarray(out.image), np.asarray(m))
    out = mask(enc(m.convert("RGB"), "JPEG", quality=100), "white")
    assert out.notes == ("mask: converted from RGB to grayscale (L)",) and out.image.getpixel((0, 0)) > 250
    out = mask(enc(m.convert("1")), "white")
    assert out.notes == ("mask: converted from 1-bit black and white (1) to grayscale (L)",)
    out = mask(enc(m.convert("RGBA")), "white")
    assert out.notes == ("mask: transparency ignored (white marks the area to repaint)",
                         "mask: converted from RGB to grayscale (L)")
    sixteen = Image.fromarray(np.asarray(m).astype(np.uint16) * 257)
    out = mask(enc(sixteen), "white")
    assert np.array_equal(np.asarray(out.image), np.asarray(m)) and "16-bit" in out.notes[0]


@pytest.mark.parametrize("level", [0, 127])
def test_white_mask_that_repaints_nothing_is_refused(level):
    refused(mask, enc(Image.new("L", (8, 6), level)), "white", match="mask repaints nothing")
    assert mask(enc(Image.new("L", (8, 6), 128)), "white").image.getpixel((0, 0)) == 128


@pytest.mark.parametrize("convention", ["alpha", "white"])
def test_a_mask_of_another_size_is_refused_naming_both(convention):
    m = Image.new("RGBA", (8, 6), (255, 255, 255, 0))
    refused(mask, enc(m), convention, (8, 8), match="mask is 8x6 but the image is 8x8; send a mask of the same size")


def test_mask_size_is_checked_after_its_exif_orientation():
    m = Image.new("L", (8, 6), 255)
    data = with_orientation(m, 6, "PNG")
    out = mask(data, "white", (6, 8))
    assert out.image.size == (6, 8) and out.notes == ("mask: EXIF orientation applied (rotated 90° clockwise)",)
    refused(mask, data, "white", (8, 6), match="mask is 6x8 but the image is 8x6")


def test_mask_limits_and_formats():
    m = enc(Image.new("L", (8, 6), 255))
    refused(read_mask, m, "mask", (8, 6), "white", MB, 47, match="mask has too many pixels")
    refused(read_mask, m, "mask", (8, 6), "white", 10, MAX_PIXELS, match="mask is .* over the limit of 10 bytes")
    refused(mask, b"", "white", match="mask is empty")
    refused(mask, enc(Image.new("L", (8, 6), 255), "GIF"), "white", match="mask is in GIF format")


def test_uploads_read_in_threads_leave_the_warning_filters_as_they_were():
    """catch_warnings is not thread-safe: without the module's lock, overlapping blocks restore each
    other's filter lists and the error filter stays behind. A tiny switch interval makes them overlap."""
    import concurrent.futures
    import sys

    before, data = list(warnings.filters), png_with_size(10_000, 10_000)

    def one(_):
        with pytest.raises(InvalidImage, match="decompression bomb"):
            init(data, max_pixels=10**12)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(2000)))
    finally:
        sys.setswitchinterval(old)
    assert warnings.filters == before
