"""One pixel path: ``images.decode_rgb`` decodes every mode right, and every consumer of photos
(quality scores, the embedding input, the packed GAN training set) sees what it decodes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image

from housegan import embed, quality
from housegan.config import CurateSettings
from housegan.gan import data
from housegan.images import ImageRejected, decode_rgb
from housegan.manifest import Status
from housegan.testing import encode

SIDE = 64
SQUARE = slice(20, 44)  # the transparent square, in both axes
WHITE = (255, 255, 255)


def _hidden_red_pixels() -> np.ndarray:
    """Opaque blue-green photo; in its centre a fully transparent square over red pixels."""
    pixels = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    pixels[..., 1] = np.linspace(40, 200, SIDE, dtype=np.uint8)[None, :]
    pixels[..., 2] = 180
    pixels[..., 3] = 255
    pixels[SQUARE, SQUARE] = (255, 0, 0, 0)
    return pixels


def _hidden_red_photo() -> bytes:
    return encode(Image.fromarray(_hidden_red_pixels(), "RGBA"))


def _flattened_by_hand() -> bytes:
    """The same photo as a viewer shows it: the transparent square white."""
    pixels = _hidden_red_pixels()[..., :3].copy()
    pixels[SQUARE, SQUARE] = WHITE
    return encode(Image.fromarray(pixels, "RGB"))


def _hidden_pixels_shown() -> bytes:
    """What dropping the alpha channel gives: the red square visible."""
    return encode(Image.fromarray(_hidden_red_pixels()[..., :3].copy(), "RGB"))


def _write(folder: Path, name: str, payload: bytes) -> str:
    path = folder / name
    path.write_bytes(payload)
    return path.as_uri()


# --- the consumers ------------------------------------------------------------------------------


def test_quality_scores_an_rgba_photo_as_composited_on_white(tmp_path: Path) -> None:
    photos = {
        "rgba.png": _hidden_red_photo(),
        "white.png": _flattened_by_hand(),
        "red.png": _hidden_pixels_shown(),
    }
    rows = [
        {
            "key": name,
            "uri": _write(tmp_path, name, payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "status": Status.OK.value,
        }
        for name, payload in photos.items()
    ]
    manifest_path = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest_path)
    store = (tmp_path / "store").as_uri()

    result = quality.compute_quality(manifest_path.as_uri(), store, CurateSettings())

    assert result.computed == 3
    scores = quality.load_scores(store).set_index("sha256")
    assert scores["error"].isna().all()
    values = scores[list(quality.SCORE_COLUMNS)].astype(float)
    by_name = {row["key"]: values.loc[row["sha256"]].to_numpy() for row in rows}
    np.testing.assert_allclose(by_name["rgba.png"], by_name["white.png"])
    assert not np.allclose(by_name["rgba.png"], by_name["red.png"])  # the hidden red is not seen


def test_embedding_input_of_an_rgba_photo_is_white_where_transparent() -> None:
    pixels = embed.load_photo(_hidden_red_photo(), SIDE)  # uint8 [3, S, S]
    square = pixels[:, 24:40, 24:40]
    assert int(square.min()) >= 250  # white: no trace of the red underneath
    assert pixels[:, 2, 2].tolist() == list(_hidden_red_pixels()[2, 2, :3])


def test_packed_gan_image_of_an_rgba_photo_is_white_where_transparent(tmp_path: Path) -> None:
    uri = _write(tmp_path, "rgba.png", _hidden_red_photo())
    manifest_path = tmp_path / "manifest.parquet"
    pd.DataFrame([{"uri": uri, "city": "austin", "image_type": "exterior"}]).to_parquet(
        manifest_path
    )

    prepared = data.prepare(str(manifest_path), (tmp_path / "store").as_uri(), 32)

    image = data.load_packed(prepared.uri).images[0]  # uint8 [32, 32, 3]; the square is 12..20
    assert prepared.skipped == 0
    assert image[12:20, 12:20].min() >= 250
    assert image[1, 1, 2] > 150 and image[1, 1, 0] < 30  # the opaque part is kept as it was


def test_gallery_thumbnail_of_an_rgba_photo_is_white_where_transparent(tmp_path: Path) -> None:
    thumb = quality.load_image(_write(tmp_path, "rgba.png", _hidden_red_photo()), 32)
    assert thumb.size == (32, 32) and thumb.mode == "RGB"
    assert np.asarray(thumb)[12:20, 12:20].min() >= 250


# --- the decoder, mode by mode ------------------------------------------------------------------


def test_palette_with_transparency_is_white_where_transparent() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([255, 0, 0, 0, 160, 0])  # index 0 red (transparent), 1 green
    for x in range(4):
        for y in range(8):
            palette.putpixel((x, y), 0)
    for fmt in ("PNG", "GIF"):
        rgb = decode_rgb(encode(palette, fmt, transparency=0))
        assert rgb.mode == "RGB"
        assert rgb.getpixel((1, 1)) == WHITE, fmt
        assert rgb.getpixel((6, 6)) == (0, 160, 0), fmt


def test_gray_with_alpha_and_palette_alpha_are_composited_on_white() -> None:
    gray = Image.new("LA", (8, 8), (30, 255))
    gray.paste((30, 0), (0, 0, 4, 8))
    rgb = decode_rgb(encode(gray))
    assert rgb.getpixel((1, 1)) == WHITE and rgb.getpixel((6, 6)) == (30, 30, 30)
    keyed = Image.new("RGB", (8, 8), (9, 9, 9))  # a tRNS colour key instead of an alpha channel
    keyed.paste((200, 10, 10), (0, 0, 4, 8))
    rgb = decode_rgb(encode(keyed, transparency=(9, 9, 9)))
    assert rgb.getpixel((6, 6)) == WHITE and rgb.getpixel((1, 1)) == (200, 10, 10)


def test_cmyk_jpeg_decodes_to_its_rgb_colour() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in print colours
    red = np.asarray(decode_rgb(encode(cmyk, "JPEG", quality=95))).astype(int)
    assert red.shape == (16, 16, 3)
    assert red[..., 0].min() > 230 and red[..., 1:].max() < 25


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    levels = np.array([[0, 16_384, 32_768, 65_535]], dtype=np.uint16).repeat(4, axis=0)
    stored = Image.fromarray(levels)
    assert stored.mode == "I;16"
    rgb = np.asarray(decode_rgb(encode(stored, fmt)))
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 255]  # Pillow's own convert gives 0, 255, 255, 255
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_float_grayscale_in_unit_range_is_scaled() -> None:
    levels = np.array([[0.0, 0.5, 1.0]], dtype=np.float32).repeat(3, axis=0)
    rgb = np.asarray(decode_rgb(encode(Image.fromarray(levels, "F"), "TIFF")))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotated_photo_decodes_as_displayed() -> None:
    stored = Image.new("RGB", (60, 20), "blue")
    stored.paste(Image.new("RGB", (10, 20), "red"), (0, 0))  # red on the stored left edge
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 95})):
        shown = np.asarray(decode_rgb(encode(stored, fmt, exif=exif, **options))).astype(int)
        assert shown.shape == (60, 20, 3), fmt
        assert shown[:8, :, 0].mean() > 200 and shown[:8, :, 2].mean() < 60, fmt  # left -> top
        assert shown[-8:, :, 2].mean() > 200, fmt


def test_max_side_shrinks_keeping_the_aspect_ratio() -> None:
    big = Image.new("RGB", (1600, 1200), (10, 200, 30))
    for fmt in ("JPEG", "PNG"):
        small = decode_rgb(encode(big, fmt), max_side=100)
        assert small.size == (100, 75), fmt
    assert decode_rgb(encode(big, "JPEG"), draft_side=300).size == (400, 300)  # 1/4 scale
    assert decode_rgb(encode(Image.new("RGB", (40, 30))), max_side=100).size == (40, 30)


def test_undecodable_bytes_raise_image_rejected() -> None:
    photo = encode(Image.new("RGB", (96, 64), "gray"), "JPEG")
    for payload in (b"", b"not an image", photo[:200]):
        with pytest.raises(ImageRejected):
            decode_rgb(payload)
