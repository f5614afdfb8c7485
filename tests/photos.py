"""Photos as phones and cameras write them, built here from the sample images: stored sideways
with an EXIF orientation tag, or tagged with a wide-gamut colour profile (Display P3, Adobe RGB).

The profiles are written byte by byte from the ICC specification (a v2 matrix/TRC display
profile: primaries adapted to D50 with the Bradford transform, one tone curve per channel), and
the expected colours are computed here with NumPy from the same chromaticities, independently
of the colour management the models use.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

D65 = (0.3127, 0.3290)
D50_XYZ = np.array([0.9642, 1.0, 0.8249])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


ADOBE_GAMMA = 563 / 256


class Space:
    """An RGB colour space: primaries and white (xy chromaticities) and a tone curve."""

    def __init__(self, name, primaries, white, decode, encode, gamma=None):
        self.name, self.primaries, self.white = name, primaries, white
        self.decode, self.encode, self.gamma = decode, encode, gamma

    def to_xyz_d50(self) -> np.ndarray:
        """Linear RGB -> XYZ relative to D50 (the ICC connection space)."""
        xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])  # noqa: E731
        prim = np.stack([xyz(*p) for p in self.primaries], axis=1)
        white = xyz(*self.white)
        m = prim * np.linalg.solve(prim, white)
        cone_src, cone_dst = BRADFORD @ white, BRADFORD @ D50_XYZ
        adapt = np.linalg.inv(BRADFORD) @ np.diag(cone_dst / cone_src) @ BRADFORD
        return adapt @ m


SRGB = Space("sRGB", SRGB_PRIMARIES, D65, srgb_decode, srgb_encode)
DISPLAY_P3 = Space("Display P3 (test)", ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)), D65,
                   srgb_decode, srgb_encode)
ADOBE_RGB = Space("Adobe RGB (1998) compatible (test)",
                  ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)), D65,
                  lambda v: v ** ADOBE_GAMMA, lambda v: np.clip(v, 0, 1) ** (1 / ADOBE_GAMMA),
                  gamma=ADOBE_GAMMA)


def convert(pixels: np.ndarray, src: Space, dst: Space) -> np.ndarray:
    """uint8 RGB pixels in `src` -> uint8 RGB pixels showing the same colours in `dst`."""
    linear = src.decode(pixels.astype(np.float64) / 255)
    m = np.linalg.inv(dst.to_xyz_d50()) @ src.to_xyz_d50()
    out = dst.encode(linear @ m.T)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def icc_profile(space: Space) -> bytes:
    """A v2 ICC display profile (matrix/TRC) for `space`."""
    def xyz_tag(v):
        return b"XYZ " + b"\0" * 4 + b"".join(_s15(x) for x in v)

    if space.gamma:
        curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(space.gamma * 256))
    else:
        table = np.round(space.decode(np.linspace(0, 1, 1024)) * 65535).astype(">u2")
        curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1024) + table.tobytes()
    name = space.name.encode() + b"\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(name)) + name
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)
    cprt = b"text" + b"\0" * 4 + b"No copyright, test profile\0"
    m = space.to_xyz_d50()
    tags = [(b"desc", desc), (b"cprt", cprt), (b"wtpt", xyz_tag(D50_XYZ)),
            (b"rXYZ", xyz_tag(m[:, 0])), (b"gXYZ", xyz_tag(m[:, 1])),
            (b"bXYZ", xyz_tag(m[:, 2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        pad = b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + pad
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24
              + struct.pack(">I", 0) + b"".join(_s15(x) for x in D50_XYZ) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """`img` saved in `fmt` (any format Pillow or its plugins write), as bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _phone(fmt: str) -> dict:
    """How a phone saves: high-quality JPEG; lossless formats as they are."""
    return {"quality": 95} if fmt == "JPEG" else {}


def tagged(photo: Image.Image, space: Space, fmt: str = "PNG") -> bytes:
    """`photo` (sRGB) re-expressed in `space` and saved with that space's ICC profile: it shows
    the same colours as the photo."""
    pixels = convert(np.asarray(photo.convert("RGB")), SRGB, space)
    return encode(Image.fromarray(pixels), fmt, icc_profile=icc_profile(space), **_phone(fmt))


def stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an `upright` picture with EXIF `orientation`, from the
    EXIF specification: where the stored 0th row and 0th column lie in the picture as shown."""
    return {1: lambda a: a,
            2: lambda a: a[:, ::-1],                     # top-right: mirrored
            3: lambda a: a[::-1, ::-1],                  # bottom-right: upside down
            4: lambda a: a[::-1, :],                     # bottom-left: mirrored vertically
            5: lambda a: a.transpose(1, 0, 2),           # left-top
            6: lambda a: np.rot90(a, 1),                 # right-top: phone held upright
            7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # right-bottom
            8: lambda a: np.rot90(a, -1)}[orientation](upright)


def sideways(photo: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """`photo` stored as a camera would with EXIF `orientation` (1-8), the tag saying so."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.ascontiguousarray(stored(np.asarray(photo.convert("RGB")), orientation))
    return encode(Image.fromarray(pixels), fmt, exif=exif, **_phone(fmt))


def sideways_jpeg(photo: Image.Image, orientation: int) -> bytes:
    return sideways(photo, orientation, "JPEG")
