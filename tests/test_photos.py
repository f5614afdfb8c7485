"""Photos as phones and cameras write them: EXIF orientation, colour profiles, HEIC and AVIF.

The decoded pixels are checked in-process against values computed independently (tests/photos.py);
the served models are checked to answer exactly as the same code does in-process, and, for
lossless files, exactly as for the upright sRGB photo.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tritonlab.serving import clients

from . import photos

FULL = 10**6  # a short side no photo reaches: decoded at full size (no reduced-scale JPEG draft)


@pytest.fixture(scope="module")
def photo(images) -> Image.Image:
    return Image.open(images[3]).convert("RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(decoding, photo, orientation):
    """Lossless (PNG): exactly the upright pixels. As phones save (JPEG): within JPEG's noise."""
    upright = np.asarray(photo)
    png = photos.sideways(photo, orientation, "PNG")
    assert np.array_equal(np.asarray(decoding.open_image(png, FULL)), upright)
    jpeg = photos.sideways(photo, orientation, "JPEG")
    reference = np.asarray(decoding.open_image(photos.sideways(photo, 1, "JPEG"), FULL))
    decoded = np.asarray(decoding.open_image(jpeg, FULL))
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - reference).mean() < 2.0  # rotated blocks re-encoded
    if orientation != 1:  # the test can fail: the stored pixels are not the upright ones
        stored = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert stored.shape != upright.shape or not np.array_equal(stored, upright)


@pytest.mark.parametrize("space", [photos.DISPLAY_P3, photos.ADOBE_RGB], ids=lambda s: s.name)
def test_colour_profiles_are_converted_to_srgb(decoding, photo, space):
    """The same colours as the photo, within one level; read as sRGB they would be off."""
    data = photos.tagged(photo, space, "PNG")
    upright = np.asarray(photo).astype(int)
    decoded = np.asarray(decoding.open_image(data, FULL)).astype(int)
    assert np.abs(decoded - upright).max() <= 1
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(naive - upright).mean() > 2 and np.abs(naive - upright).max() > 15


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode_to_the_photo(decoding, photo, fmt):
    data = photos.encode(photo, fmt, quality=90)
    decoded = np.asarray(decoding.open_image(data, FULL)).astype(int)
    assert decoded.shape == np.asarray(photo).shape
    assert np.abs(decoded - np.asarray(photo).astype(int)).mean() < 4  # lossy, at quality 90


def test_heic_refusal_names_the_missing_plugin_only_when_it_is_missing(decoding, monkeypatch):
    monkeypatch.setattr(decoding, "HEIF_DECODER", False)
    assert "install the pillow-heif package" in str(decoding._unsupported("HEIC/HEIF"))
    monkeypatch.setattr(decoding, "HEIF_DECODER", True)  # installed, yet this file is unknown
    assert "pillow-heif" not in str(decoding._unsupported("HEIC/HEIF"))
    assert "convert the photo to JPEG" in str(decoding._unsupported("HEIC/HEIF"))


def test_a_format_without_decoder_is_refused_by_name(decoding):
    with pytest.raises(decoding.BadImage, match="JPEG XL images cannot be decoded here.*"
                                                       "convert the photo to JPEG"):
        decoding.decode_image(decoding.to_image_bytes(b"\xff\x0a" + bytes(300)))


@pytest.mark.server
def test_served_classifier_sees_photos_as_shown(triton, reference, photo):
    """Lossless files with a tag: the upright photo's label and probability (within 1e-6).
    Phone formats (sideways JPEG, HEIC, AVIF, Display P3 JPEG): exactly what the same code
    answers in-process (within 1e-5), whose pixels the tests above check."""
    upright = clients.classify(triton.http_url, [photos.encode(photo, "PNG")])[0]
    for orientation in range(1, 9):
        got = clients.classify(triton.http_url, [photos.sideways(photo, orientation, "PNG")])[0]
        assert got.label == upright.label, orientation
        assert got.probability == pytest.approx(upright.probability, abs=1e-6), orientation
    phone = [photos.sideways(photo, 6, "JPEG"), photos.encode(photo, "HEIF", quality=90),
             photos.encode(photo, "AVIF", quality=90),
             photos.tagged(photo, photos.DISPLAY_P3, "JPEG"),
             photos.tagged(photo, photos.ADOBE_RGB, "PNG")]
    served = clients.classify(triton.http_url, phone)
    expected = reference.classify(phone)
    for got, (label, probability) in zip(served, expected):
        assert got.label == label and got.probability == pytest.approx(probability, abs=1e-5)


@pytest.mark.server
def test_served_captioning_sees_the_photo_upright(triton, photo):
    """A sideways photo with its orientation tag gets the upright photo's label and caption."""
    upright = clients.caption(triton.http_url, [photos.encode(photo, "PNG")])[0]
    sideways = clients.caption(triton.http_url, [photos.sideways(photo, 6, "PNG")])[0]
    assert (sideways.label, sideways.caption) == (upright.label, upright.caption)
    assert sideways.probability == pytest.approx(upright.probability, abs=1e-6)
