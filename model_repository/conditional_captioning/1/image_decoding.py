# GENERATED FILE: a copy of model_repository/food_classifier/1/image_decoding.py, written by
# `make configs` (tritonlab.assets.repository.write_shared_code). Edit that file, not this copy.
"""Image decoding for the course's models: encoded bytes in, upright 8-bit sRGB pixels out.

Shared by food_classifier and conditional_captioning (which holds a generated copy of this
file). Plain Python: no Triton needed, so the course runs the same code in-process.

- `to_image_bytes`: one input element (raw image bytes, or base64 text of them) to bytes;
- `open_image`: bytes to an RGB image as a photo viewer shows it (EXIF orientation applied,
  colour profile converted to sRGB), refusing what is not a sane image with `BadImage`;
- `decode_image`: the classifier's input, resized and centre-cropped to 224x224.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF, the default of many phones, through the pillow-heif plugin
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_DECODER = True
except ImportError:  # refused with a message that says how to convert
    HEIF_DECODER = False

MAX_ENCODED_BYTES = 20 * 1024 * 1024  # larger uploads are refused before decoding
MAX_PIXELS = 50_000_000               # larger images (decompression bombs) are refused
RESIZE = 256                          # short side after resizing, as in training
CROP = 224                            # centre crop fed to the network

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*")


class BadImage(ValueError):
    """An input element that is not a usable image; the message says why."""


#: ISO base media file brands (bytes 8-12 after "ftyp") of still-image formats.
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
AVIF_BRANDS = (b"avif", b"avis")


def _looks_like_image(data: bytes) -> bool:
    return (data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
            or (data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS + AVIF_BRANDS))


def format_name(data: bytes) -> str | None:
    """The name of a format the decoders may lack, from its first bytes (None: not one of them)."""
    if data[4:8] == b"ftyp" and data[8:12] in AVIF_BRANDS:
        return "AVIF"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIC/HEIF"
    if data.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    return None


def _unsupported(name: str) -> BadImage:
    missing = name == "HEIC/HEIF" and not HEIF_DECODER
    plugin = " (install the pillow-heif package on the server)" if missing else ""
    return BadImage(f"{name} images cannot be decoded here{plugin}: convert the photo to JPEG "
                    "or PNG first (on a phone: share or export it as JPEG, 'Most Compatible'; "
                    "on a computer, e.g. `magick photo.heic photo.jpg`)")


def to_image_bytes(value) -> bytes:
    """The encoded image in one input element: raw image bytes, or base64 text of them."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise BadImage(f"expected bytes, got {type(value).__name__}")
    data = bytes(value)
    if not data:
        raise BadImage("empty input: send the bytes of an encoded image (JPEG, PNG, ...)")
    if len(data) > MAX_ENCODED_BYTES:
        raise BadImage(f"input of {len(data)} bytes is larger than the limit of "
                       f"{MAX_ENCODED_BYTES} bytes")
    if _looks_like_image(data):
        return data
    text = data.strip()
    if text[:5].lower() == b"data:" and b"," in text:  # data URI: data:image/jpeg;base64,....
        text = text.split(b",", 1)[1]
    try:
        decoded = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded and _looks_like_image(decoded):
        return decoded
    if decoded:
        raise BadImage("base64 text that does not decode to a JPEG, PNG, HEIC, AVIF, WebP, GIF, "
                       "BMP or TIFF image")
    return data  # no known signature and not base64: let the decoder have the last word


def open_image(data: bytes, min_side: int = RESIZE) -> Image.Image:
    """Decode an encoded image to 8-bit sRGB, upright as the photo is shown, refusing what is
    not a sane image.

    As a photo viewer shows it: the EXIF orientation (phones store portrait photos sideways
    with a tag that says so) is applied, and an embedded colour profile (Display P3, Adobe RGB,
    CMYK, ...) is converted to sRGB, the colour space the networks were trained on. JPEGs larger
    than needed are decoded at a reduced scale (1/2, 1/4, 1/8) whose short side is still at
    least `min_side`: much cheaper than decoding at full size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width < 1 or height < 1:
                raise BadImage(f"image has no pixels ({width}x{height})")
            if width * height > MAX_PIXELS:
                raise BadImage(f"image of {width}x{height} pixels is larger than the limit of "
                               f"{MAX_PIXELS} pixels")
            scale = min_side / min(width, height)
            if scale < 1:
                img.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            profile = img.info.get("icc_profile")
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(_to_srgb(img, profile))
    except BadImage:
        raise
    except UnidentifiedImageError:
        name = format_name(data)
        if name:
            raise _unsupported(name) from None
        raise BadImage(f"not an image in a known format (it starts with {data[:12]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"cannot decode image: {exc}") from None


def decode_image(data: bytes) -> np.ndarray:
    """Decode, resize (short side 256) and centre-crop to a 224x224x3 uint8 RGB array."""
    img = open_image(data, RESIZE)
    width, height = img.size
    scale = RESIZE / min(width, height)
    # Resize(256) then CenterCrop(224) in one resampling pass: the crop box in source pixels.
    box_w, box_h = CROP / scale, CROP / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    img = img.resize((CROP, CROP), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    return np.asarray(img, dtype=np.uint8)


_SRGB = None


def _to_srgb(img: Image.Image, profile: bytes | None) -> Image.Image:
    """`img` converted from its embedded ICC profile to sRGB (unchanged without one, when the
    profile is sRGB already, or when it cannot be read: viewers then show the pixels as sRGB)."""
    global _SRGB
    if not profile or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return img
        if _SRGB is None:
            _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        out = ImageCms.profileToProfile(img, source, _SRGB,
                                        outputMode="RGBA" if img.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img
    out.info.pop("icc_profile", None)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (grey, palette, CMYK, 16-bit, with alpha) to 8-bit RGB; alpha over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr.clip(0, 1) * 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")
