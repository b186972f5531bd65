"""Decoding and validating listing photos from bytes: one place that knows Pillow's traps.

Every stage that looks at pixels (quality scores, embedding input, GAN training data, galleries,
fine-tuning) decodes through ``decode_rgb``, so they all see the same picture:

* ``Image.verify()`` misses truncation, so validation fully decodes (``load()``).
* A decompression bomb is refused from its header, before any pixel is decoded.
* Width and height are reported as displayed, i.e. after the EXIF orientation.
* Only the formats in ``ImageLimits.formats`` are opened (no EPS/Ghostscript surprises).
* Transparency (RGBA, LA, PA, a palette or gray/RGB colour key) is composited onto white: the
  pixels under a transparent area are whatever the editor left there, not part of the photo.
* 16-bit and 32-bit grayscale are scaled to 8 bits (Pillow's own conversion clips them).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from housegan.config import ImageLimits
from housegan.manifest import Status

# ImageLimits.max_pixels is the bomb limit we enforce (before decoding); Pillow's own warning at
# its default of ~89 Mpx would be noise. Its hard error (2x that) still fires and is caught.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
Image.init()  # register every plugin now: Image.open(formats=...) looks them up by name

# EXIF orientations 5-8 rotate by 90/270 degrees: the displayed image swaps width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}

# Bump when decode_rgb gives different pixels for the same bytes: derived data (quality scores,
# embedding model tags, packed GAN datasets) names it, so stale results are recomputed.
# 2: alpha composited on white everywhere, 16-bit grayscale scaled instead of clipped.
DECODER_VERSION = 2
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GRAY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


@dataclass(frozen=True)
class ImageCheck:
    """What validating one object's bytes concluded."""

    status: Status
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    error: str | None = None


class ImageRejected(ValueError):
    """Bytes that are not a usable image; ``check`` says why (status and message)."""

    def __init__(self, check: ImageCheck) -> None:
        super().__init__(f"{check.status}: {check.error}")
        self.check = check


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image, honouring the EXIF orientation tag."""
    width, height = image.size
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a malformed EXIF block only loses the orientation
        orientation = None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def _open_checked(
    data: bytes, limits: ImageLimits | None, draft_side: int | None = None
) -> tuple[Image.Image | None, ImageCheck]:
    """Open, refuse bombs by header, fully decode. Returns the loaded image when usable.

    Without ``limits`` any format Pillow reads is opened and only Pillow's own bomb limit holds
    (for photos ingest already accepted under whatever limits it ran with).
    """
    if not data:
        return None, ImageCheck(Status.NOT_IMAGE, error="empty object (0 bytes)")
    formats = None if limits is None else [name for name in limits.formats if name in Image.OPEN]
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        accepted = "" if formats is None else f" in an accepted format {formats}"
        return None, ImageCheck(Status.NOT_IMAGE, error=f"not an image{accepted}")
    except Image.DecompressionBombError as exc:
        return None, ImageCheck(Status.TOO_LARGE, error=str(exc))
    except Exception as exc:  # a header Pillow recognises but cannot parse
        return None, ImageCheck(Status.CORRUPT, error=f"unreadable header: {exc}")
    width, height = displayed_size(image)
    header = {"width": width, "height": height, "format": image.format, "mode": image.mode}
    if limits is not None and width * height > limits.max_pixels:
        image.close()
        return None, ImageCheck(
            Status.TOO_LARGE,
            **header,
            error=f"{width}x{height} = {width * height} pixels > max_pixels {limits.max_pixels}",
        )
    if draft_side is not None:
        # JPEG only (others ignore it): decode at 1/2..1/8 scale, keeping both sides >= draft_side.
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
    except Exception as exc:  # Pillow raises many types on damaged data; all mean corrupt
        image.close()
        return None, ImageCheck(Status.CORRUPT, **header, error=f"decode failed: {exc}")
    if limits is not None and min(width, height) < limits.min_side:
        image.close()
        return None, ImageCheck(
            Status.TOO_SMALL, **header, error=f"{width}x{height} < min_side {limits.min_side}"
        )
    return image, ImageCheck(Status.OK, **header)


def inspect_image(data: bytes, limits: ImageLimits) -> ImageCheck:
    """Validate an object's bytes by a full decode; never raises on bad input."""
    image, check = _open_checked(data, limits)
    if image is not None:
        image.close()
    return check


def decode_rgb(
    data: bytes,
    max_side: int | None = None,
    *,
    draft_side: int | None = None,
    limits: ImageLimits | None = None,
) -> Image.Image:
    """Decode a photo as displayed: EXIF-rotated, 8-bit RGB, transparency on white.

    ``max_side``: shrink (aspect kept) so that no side is longer; a JPEG is then decoded at a
    reduced scale first, which is much cheaper. ``draft_side``: the caller resizes itself and
    needs both sides at least this long; a JPEG may be decoded at a reduced scale down to it.
    ``limits``: also refuse what ingest would (format, pixels, min side). Raises
    ``ImageRejected`` (a ``ValueError``) for bytes that do not decode.
    """
    if draft_side is None:
        draft_side = max_side
    image, check = _open_checked(data, limits, draft_side)
    if image is None:
        raise ImageRejected(check)
    with image:
        rgb = to_rgb(_upright(image))
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return rgb


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block only loses the orientation, as in displayed_size
        return image.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of an already decoded image; ``decode_rgb`` uses it, so do pictures built in
    memory. Transparency is composited onto white, wide grayscale scaled to 8 bits."""
    if image.mode in _WIDE_GRAY_MODES:
        image = _wide_gray_to_la(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_gray_to_la(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit L (LA if it has a transparent value).

    Integer modes are read as 16-bit (Pillow's mode for 16-bit PNG and TIFF), so 65535 is white.
    Float has no fixed range: [0, 1], [0, 255] or [0, 65535], whichever holds its maximum.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = float(np.nanmax(values)) if values.size else 0.0
        full = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    else:
        full = 65535.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / full), 0, 255).round().astype(np.uint8)
    gray = Image.fromarray(scaled)
    key = image.info.get("transparency")
    if not isinstance(key, int | float):
        return gray
    alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
    return Image.merge("LA", (gray, alpha))
