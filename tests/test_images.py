"""``read_image`` decodes every image mode to what the picture looks like: one test per mode, each with a
pixel value that the naive ``convert('RGB')`` gets wrong where it does."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import datvit.utils.images as images
from datvit.utils.images import IMAGE_ERRORS, ImageTooLargeError, read_image


def pixel(img: Image.Image, xy=(0, 0)):
    return img.getpixel(xy)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)  # black, 50% grey, white
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    assert Image.open(path).convert("RGB").getpixel((1, 0)) == (255, 255, 255)  # the bug this guards against
    rgb = read_image(path, "RGB")
    assert [pixel(rgb, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    assert [pixel(read_image(path, "L"), (x, 0)) for x in range(3)] == [0, 128, 255]


def test_float_tiff_in_0_1_is_scaled(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(path)
    assert [pixel(read_image(path, "L"), (x, 0)) for x in range(3)] == [0, 128, 255]


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), (200, 30, 60)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert Image.open(path).mode == "P"
    assert pixel(read_image(path, "RGB")) == (200, 30, 60)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 120, 40] + [0] * 762)
    img.putdata([0, 1])
    path = tmp_path / "palette_t.png"
    img.save(path, transparency=0)  # index 0 (stored black) is transparent
    rgb = read_image(path, "RGB")
    assert pixel(rgb, (0, 0)) == (255, 255, 255) and pixel(rgb, (1, 0)) == (10, 120, 40)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (30, 140, 220)).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    r, g, b = pixel(read_image(path, "RGB"), (8, 8))
    assert abs(r - 30) <= 4 and abs(g - 140) <= 4 and abs(b - 220) <= 4


@pytest.mark.parametrize("mode, colour", [("RGBA", (10, 200, 30, 0)), ("LA", (90, 0))])
def test_transparent_pixels_are_white_half_transparent_are_blended(tmp_path, mode, colour):
    img = Image.new(mode, (2, 1), colour)
    half = (10, 200, 30, 128) if mode == "RGBA" else (90, 128)
    img.putpixel((1, 0), half)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    rgb = read_image(path, "RGB")
    assert pixel(rgb, (0, 0)) == (255, 255, 255)
    blended = [round((c * 128 + 255 * 127) / 255) for c in ((10, 200, 30) if mode == "RGBA" else (90,) * 3)]
    assert all(abs(a - b) <= 1 for a, b in zip(pixel(rgb, (1, 0)), blended))
    assert read_image(path, "L").mode == "L"


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # a red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=100)
    upright = read_image(path, "RGB")
    assert upright.size == (20, 40)
    r, g, b = pixel(upright, (10, 2))  # the band is now at the top
    assert r > 200 and b < 60


def test_large_jpeg_is_drafted_and_too_large_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (800, 600), (120, 60, 30)).save(path)
    assert read_image(path, "RGB").size == (800, 600)
    monkeypatch.setattr(images, "DRAFT_PIXELS", 200 * 150)  # as if 800×600 were above 8192²
    drafted = read_image(path, "RGB")
    assert drafted.size == (200, 150)  # decoded at 1/4 scale
    assert all(abs(a - b) <= 2 for a, b in zip(pixel(drafted, (100, 75)), (120, 60, 30)))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="800×600 pixels"):
        read_image(path, "RGB")
    assert issubclass(ImageTooLargeError, IMAGE_ERRORS)


def test_above_pils_bomb_limit_but_below_ours_is_read(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("L", (300, 10), 7).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would raise DecompressionBombError at 2×
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert pixel(read_image(path, "L")) == 7
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's global is left as it was


def test_truncated_file_raises_an_image_error(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(IMAGE_ERRORS):
        read_image(path, "RGB")
