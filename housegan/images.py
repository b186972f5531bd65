"""Decoding and validating listing photos from bytes: one place that knows Pillow's traps.

* ``Image.verify()`` misses truncation, so validation fully decodes (``load()``).
* A decompression bomb is refused from its header, before any pixel is decoded.
* Width and height are reported as displayed, i.e. after the EXIF orientation.
* Only the formats in ``ImageLimits.formats`` are opened (no EPS/Ghostscript surprises).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from housegan.config import ImageLimits
from housegan.manifest import Status

# ImageLimits.max_pixels is the bomb limit we enforce (before decoding); Pillow's own warning at
# its default of ~89 Mpx would be noise. Its hard error (2x that) still fires and is caught.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
Image.init()  # register every plugin now: Image.open(formats=...) looks them up by name

# EXIF orientations 5-8 rotate by 90/270 degrees: the displayed image swaps width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


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


def _open_checked(data: bytes, limits: ImageLimits) -> tuple[Image.Image | None, ImageCheck]:
    """Open, refuse bombs by header, fully decode. Returns the loaded image when usable."""
    if not data:
        return None, ImageCheck(Status.NOT_IMAGE, error="empty object (0 bytes)")
    formats = [name for name in limits.formats if name in Image.OPEN]
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        return None, ImageCheck(
            Status.NOT_IMAGE, error=f"not an image in an accepted format {formats}"
        )
    except Image.DecompressionBombError as exc:
        return None, ImageCheck(Status.TOO_LARGE, error=str(exc))
    except Exception as exc:  # a header Pillow recognises but cannot parse
        return None, ImageCheck(Status.CORRUPT, error=f"unreadable header: {exc}")
    width, height = displayed_size(image)
    header = {"width": width, "height": height, "format": image.format, "mode": image.mode}
    if width * height > limits.max_pixels:
        image.close()
        return None, ImageCheck(
            Status.TOO_LARGE,
            **header,
            error=f"{width}x{height} = {width * height} pixels > max_pixels {limits.max_pixels}",
        )
    try:
        image.load()
    except Exception as exc:  # Pillow raises many types on damaged data; all mean corrupt
        image.close()
        return None, ImageCheck(Status.CORRUPT, **header, error=f"decode failed: {exc}")
    if min(width, height) < limits.min_side:
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


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for models: transparency composited onto white, CMYK/palette/grayscale converted."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode a usable photo as displayed (EXIF-rotated) RGB; raises ImageRejected otherwise."""
    image, check = _open_checked(data, limits)
    if image is None:
        raise ImageRejected(check)
    with image:
        return to_rgb(ImageOps.exif_transpose(image))
