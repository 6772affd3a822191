"""Every image gridface reads goes through here: training, validation, calibration, inference, ``check_data``.

A decoder that returns pixels is not trusted on its own: libjpeg fills the missing half of a truncated JPEG with
grey and only prints "Premature end of JPEG file", and it decodes damaged data (a cut file with its end marker put
back, overwritten bytes) into grey or shifted blocks with only a "Corrupt JPEG data" line on stderr. So the bytes
are checked for a complete structure first (a JPEG's scans must end in an EOI marker); a JPEG is then decoded by
libjpeg-turbo through simplejpeg in strict mode, where each of those warnings is an error (pixels identical to
OpenCV's, which uses the same library; EXIF orientation applied as OpenCV does), other formats once with OpenCV
(EXIF orientation applied, 16-bit scaled to 8, alpha dropped). Arrays and PIL images handed to the Python API are
converted by the same rules, so a photo gives the same boxes whichever way it arrives.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# What can be wrong with an image file, as counted in reports.
MISSING, EMPTY, NOT_IMAGE, TRUNCATED, UNDECODABLE = "missing", "empty", "not an image", "truncated", "undecodable"
CORRUPT = "corrupt"  # whole in structure, damaged inside: a lenient decoder invents the lost pixels
LOW_RANGE = "16-bit with 8-bit values"  # scaled to 8 bits as OpenCV does (>> 8), every pixel would be 0: black

_SIGNATURES = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"BM": "bmp", b"II*\x00": "tiff",
               b"MM\x00*": "tiff"}
# JPEG markers without a length field
_STANDALONE = {0x01, *range(0xD0, 0xD9)}


class ImageReadError(ValueError):
    """An image that cannot be used; ``kind`` is one of the module's problem kinds."""

    def __init__(self, path: str | Path, kind: str, detail: str = "") -> None:
        self.path, self.kind, self.detail = str(path), kind, detail
        super().__init__(f"{path}: {kind}{f' ({detail})' if detail else ''}")


def image_format(data: bytes) -> str | None:
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def jpeg_problem(data: bytes) -> str | None:
    """Why a JPEG's structure is incomplete, or None. Walks the marker segments to the first scan (skipping
    APP segments, which may hold a thumbnail with its own EOI), then requires an EOI after it."""
    pos = 2
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data):
            return "ends inside its headers"
        if data[pos] != 0xFF:
            return f"no marker at byte {pos}"
        marker = data[pos + 1]
        if marker == 0xD9:
            return "ends before any image data"
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return f"segment 0x{marker:02X} at byte {pos} runs past the end of the file"
        if marker == 0xDA:  # start of scan: entropy-coded data follows; 0xFF is byte-stuffed, so EOI is unique
            break
        pos += 2 + length
    if data.find(b"\xff\xd9", pos) < 0:
        return f"no end-of-image marker after the image data ({len(data)} bytes)"
    return None


# EXIF orientation (2-8) -> (transpose, flip the rows, flip the columns), in that order: what OpenCV's reader and
# PIL's exif_transpose do to show the picture upright
ORIENTATION_STEPS = {2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False),
                     6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of a JPEG's bytes (1 when absent or unreadable); headers only, no pixels."""
    if data.find(b"Exif\x00\x00") < 0:  # anywhere: large APP segments (Photoshop's APP13) may come first
        return 1
    from PIL import Image

    try:
        block = exif_block(data)
        if block is not None:  # the APP1 segment alone: Image.open refuses photos over ~179 MP (a "decompression
            exif = Image.Exif()  # bomb") before it reads any tag, and such a photo was processed sideways
            exif.load(block)
            value = int(exif.get(0x0112, 1))
        else:
            with Image.open(io.BytesIO(data)) as im:
                value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: OpenCV ignores it too
        return 1
    return value if 1 <= value <= 8 else 1


def exif_block(data: bytes) -> bytes | None:
    """The payload of a JPEG's EXIF APP1 segment (from ``Exif\\0\\0``), or None when no APP1 marker and length
    frame it."""
    at = data.find(b"Exif\x00\x00")
    while at >= 4:
        if data[at - 4:at - 2] == b"\xff\xe1":
            length = int.from_bytes(data[at - 2:at], "big")  # counts its own two bytes
            return data[at:at - 2 + length]
        at = data.find(b"Exif\x00\x00", at + 1)
    return None


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """An HWC image turned upright by its EXIF orientation (:data:`ORIENTATION_STEPS`)."""
    transpose, flip_rows, flip_columns = ORIENTATION_STEPS.get(orientation, (False, False, False))
    if transpose:
        image = image.swapaxes(0, 1)
    if flip_rows:
        image = image[::-1]
    if flip_columns:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def strict_jpeg_decode(data: bytes, path: str | Path, **options: Any) -> np.ndarray | None:
    """``simplejpeg.decode_jpeg(data, strict=True, **options)``: the pixels; :class:`ImageReadError` (corrupt) when
    libjpeg-turbo can decode them only by recovering from damaged data; None when it cannot decode this JPEG at all
    (a kind it does not read: the caller's other decoder decides)."""
    try:
        return simplejpeg.decode_jpeg(data, strict=True, **options)
    except ValueError as strict_error:
        try:
            pixels = simplejpeg.decode_jpeg(data, strict=False, **options)
        except ValueError:
            return None
        if "extraneous bytes before marker 0xd9" in str(strict_error):
            # every block was decoded, then bytes before the end marker: the padding some encoders write (common in
            # real datasets, the picture whole), or, rarely, data damaged without losing the decoder's place
            note_once(path, f"{strict_error}: decoded (padding some encoders write after the image data; if the "
                            "picture looks damaged, replace the file)")
            return pixels
        raise ImageReadError(path, CORRUPT, f"{strict_error}; a decoder would fill the damaged part with invented "
                                            "pixels") from None


_noted: set[str] = set()


def note_once(path: str | Path, message: str) -> None:
    """A warning about a usable file, once per file and process (an image is read again every epoch)."""
    if str(path) not in _noted:
        _noted.add(str(path))
        log.warning("%s: %s", path, message)


def check_jpeg_data(data: bytes, path: str | Path = "<bytes>") -> None:
    """:class:`ImageReadError` (corrupt) when a JPEG's compressed data is damaged, without decoding it in full: for
    paths that decode elsewhere (nvJPEG on the GPU). libjpeg-turbo reads all of the data at 1/8 scale in grey (the
    damage shows in the entropy decoding, about half of a full decode's time)."""
    strict_jpeg_decode(data, path, colorspace="GRAY", min_height=1, min_width=1, min_factor=8)


def decode_image_bgr(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Bytes of an image file -> BGR uint8 HWC, as OpenCV decodes it; :class:`ImageReadError` when they are not
    a whole image."""
    if not data:
        raise ImageReadError(path, EMPTY, "0 bytes")
    fmt = image_format(data)
    if fmt == "jpeg":
        problem = jpeg_problem(data)
        if problem:
            raise ImageReadError(path, TRUNCATED, problem)
        img = strict_jpeg_decode(data, path, colorspace="BGR")
        if img is not None:
            return orient(img, exif_orientation(data))
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        if fmt is None:
            raise ImageReadError(path, NOT_IMAGE, f"starts with {data[:8]!r}, not a known image signature")
        raise ImageReadError(path, UNDECODABLE, f"{fmt} decoder failed (corrupt or truncated)")
    if fmt == "png" and len(data) > 24 and data[24] == 16 and not img.any():  # 16 bits per sample (IHDR)
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        peak = int(raw.max()) if raw is not None and raw.size else 0
        if 0 < peak < 256:
            raise ImageReadError(path, LOW_RANGE, f"a 16-bit PNG whose values all lie below 256 (the largest is "
                                                  f"{peak}): scaled to 8 bits as OpenCV does, it is black; save it "
                                                  "with 8 bits per sample (its values are 8-bit data)")
    return img


def decode_image_rgb(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Bytes of an image file -> RGB uint8 HWC; :class:`ImageReadError` when they are not a whole image."""
    return cv2.cvtColor(decode_image_bgr(data, path), cv2.COLOR_BGR2RGB)


def read_image_bytes(path: str | Path) -> bytes:
    """A file's bytes; :class:`ImageReadError` when it is missing or cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, MISSING) from None
    except (IsADirectoryError, PermissionError) as e:
        raise ImageReadError(path, UNDECODABLE, e.strerror or type(e).__name__) from None


def read_image_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 HWC from a file; :class:`ImageReadError` (missing, empty, not an image, truncated, undecodable)."""
    return decode_image_rgb(read_image_bytes(path), path)


def read_image_bgr(path: str | Path) -> np.ndarray:
    """BGR uint8 HWC from a file, checked as :func:`read_image_rgb` is: for OpenCV consumers (``gridface.infer``
    draws and encodes in BGR), without a full-size colour conversion each way."""
    return decode_image_bgr(read_image_bytes(path), path)


def array_to_rgb(image: Any, color: str = "RGB") -> np.ndarray:
    """An array (HxW, HxWx1, HxWx3, HxWx4) in ``color`` order -> RGB uint8, by the rules the file reader uses:
    uint16 scaled to 8 bits as OpenCV does for 16-bit files, float in [0, 1], alpha dropped, gray replicated.
    Anything else is a ``ValueError`` saying what is expected."""
    arr = np.asarray(image)
    if color.upper() not in ("RGB", "BGR"):
        raise ValueError(f"color must be 'RGB' or 'BGR', got '{color}'")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array has shape {arr.shape}: that looks channels-first (CHW); pass HxWx3 "
                         "(e.g. arr.transpose(1, 2, 0))")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"expected an image array of shape HxW, HxWx1, HxWx3 or HxWx4, got {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image array holds NaN or Inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"float image arrays must be in [0, 1], got values in [{lo:g}, {hi:g}]; "
                             "pass uint8 for 0-255 data")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{arr.dtype} image array has values in [{lo}, {hi}]; expected 0-255 "
                             "(or pass uint16 for 16-bit data)")
        arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {arr.dtype}")
    arr = arr[..., :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif color.upper() == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)


def pil_to_rgb(image: Any) -> np.ndarray:
    """A PIL image -> RGB uint8 with its EXIF orientation applied (as for files); 16-bit modes scaled, not
    clipped."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return array_to_rgb(np.asarray(image).astype(np.uint16))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def to_rgb(image: Any, color: str = "RGB") -> np.ndarray:
    """A path, a PIL image or an array -> RGB uint8 HWC; the same photo gives the same pixels every way."""
    if isinstance(image, str | Path):
        return read_image_rgb(image)
    if hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):
        return pil_to_rgb(image)
    return array_to_rgb(image, color)
