"""Image and mask decoding that turns odd files into RGB or a clear error.

Images are decoded with EXIF orientation applied, so masks match what people see in CVAT.
RGBA, grayscale, palette and 16-bit images are converted to 8-bit RGB; truncated or corrupt
files raise `SegloopError` naming the file. Every read goes through `limits` (regular files
within a size cap) and every decode checks the header's size against the pixel budget first.
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from components.core import limits, storage
from components.core.errors import SegloopError

# Our budget (limits.PIXELS) is checked before each decode; PIL's own bomb guard, which refuses
# at twice its limit, backs it up where an image is opened elsewhere.
Image.MAX_IMAGE_PIXELS = limits.max_image_pixels()
# A file cut short must fail to decode, never come out with its missing rows as zeros (in a
# mask: background). Off is PIL's default; said here so that no import turns it on unseen.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# What a decoder raises on a file that is not a (whole) image; DecompressionBombError too,
# since some formats (GIF frames) check their size while loading, after `open_checked`.
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


# What a file starts with, to tell a damaged image from something that is no image at all.
SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"GIF8", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WebP"),
)
SIGNATURE_NAMES = "PNG, JPEG, TIFF, GIF, BMP or WebP"
# PIL names in-memory files by their repr (`<_io.BytesIO object at 0x7f...>`): noise for people.
_OBJECT_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def _looks_like_text(data: bytes) -> bool:
    """Whether the start of `data` is printable UTF-8 (an HTML error page, a config file...)."""
    head = data[:512].decode("utf-8", errors="ignore")
    return bool(head) and all(c.isprintable() or c in "\r\n\t" for c in head)


def unreadable_reason(data: bytes, exc: BaseException | None = None) -> str:
    """Why `data` cannot be decoded, in words: empty, not an image, or a damaged image."""
    if not data:
        return "empty file (0 bytes)"
    kind = next((name for sig, at, name in SIGNATURES if data[at : at + len(sig)] == sig), None)
    if exc is None or isinstance(exc, UnidentifiedImageError):
        if kind is None:
            # Never the bytes themselves: the file may be /etc/passwd or hold a secret.
            what = "bytes of text" if _looks_like_text(data) else "bytes"
            return f"not an image ({len(data)} {what}; no {SIGNATURE_NAMES} signature)"
        return f"damaged or unsupported {kind} file ({len(data)} bytes; cannot be decoded)"
    detail = _OBJECT_REPR.sub("", str(exc)).strip(" :") or type(exc).__name__
    return f"damaged {kind or 'image'} file ({detail})"


def read_image_bytes(uri: str | Path) -> bytes:
    """An image or mask file's bytes: a regular file within limits.IMAGE."""
    return limits.read_user_bytes(uri, limits.IMAGE)


# PNG: channels per colour type, and the Adam7 passes (x0, y0, dx, dy) of an interlaced image.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_INFLATE_STEP = 1 << 20  # bytes of decompressed data held at a time while counting


def _png_raw_size(header: bytes) -> int:
    """Bytes of filtered scanlines an IHDR chunk's image needs (each row: a filter byte + data)."""
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols, rows = math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)
        if cols > 0 and rows > 0:
            total += rows * (1 + math.ceil(cols * bits / 8))
    return total


def check_png_data(data: bytes) -> None:
    """Raise OSError when a PNG's image data (its IDAT zlib stream) ends before the last row.

    PIL decodes such a file without complaint (LOAD_TRUNCATED_IMAGES or not): a well-formed
    but short zlib stream just ends, and the rows it lacks stay zero, which in a mask is class
    0, background. Counted here in bounded steps, the data itself thrown away; call it after
    the pixel budget check (the header's size is trusted for the count). Not a PNG: no-op.
    """
    if not data.startswith(SIGNATURES[0][0]):
        return
    inflate, produced, needed, pos = zlib.decompressobj(), 0, None, 8
    try:
        while pos + 8 <= len(data) and not inflate.eof:
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
            pos += 12 + length
            if kind == b"IHDR" and len(body) >= 13:
                needed = _png_raw_size(body)
            elif kind == b"IDAT":
                while body and not inflate.eof and produced < (needed or 0):
                    produced += len(inflate.decompress(body, _INFLATE_STEP))
                    body = inflate.unconsumed_tail
            elif kind == b"IEND":
                break
            if needed is not None and produced >= needed:
                return
        produced += len(inflate.flush())
    except zlib.error as exc:
        raise OSError(f"its image data is corrupt ({exc})") from None
    if needed is not None and produced < needed:
        raise OSError(f"its image data stops after {produced:,} of {needed:,} bytes: cut short")


def load_whole(img: Image.Image, data: bytes) -> None:
    """Decode `img` (opened from `data`) completely: PIL's `load`, which raises on a file cut
    short, and for a PNG `check_png_data`, for image data cut short inside a whole file."""
    img.load()
    if img.format == "PNG":
        check_png_data(data)


def open_checked(fp, source: str) -> Image.Image:
    """`Image.open` (lazy: header only) that refuses a claimed size over the pixel budget."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        # PIL refuses above twice our budget before we see the size; its message has the count.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise limits.over_budget(
            source, f"{int(claimed[1]) / 1e6:.0f} MP" if claimed else ""
        ) from None
    try:
        limits.check_pixels(*img.size, source)
    except SegloopError:
        img.close()
        raise
    return img


def decode_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 array (EXIF-transposed)."""
    if not data:
        raise SegloopError(f"{source}: {unreadable_reason(data)}; replace or remove the file")
    try:
        with open_checked(io.BytesIO(data), source) as img:
            load_whole(img, data)
            img = ImageOps.exif_transpose(img)
            return to_rgb_array(img)
    except DECODE_ERRORS as exc:
        raise SegloopError(
            f"{source}: {unreadable_reason(data, exc)}; replace or remove the file"
        ) from exc


def to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: keep the full range by scaling to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_rgb(uri: str | Path) -> np.ndarray:
    """Read an image from a path or URI as HxWx3 uint8 RGB."""
    return decode_rgb(read_image_bytes(uri), source=str(uri))


def image_size(uri: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the header where possible."""
    data = read_image_bytes(uri)
    try:
        with open_checked(io.BytesIO(data), str(uri)) as img:
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
    except DECODE_ERRORS as exc:
        raise SegloopError(f"{uri}: {unreadable_reason(data, exc)}") from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(uri: str | Path) -> np.ndarray:
    """Read a class-id mask PNG (mode L or P) as an HxW uint8 array."""
    data = read_image_bytes(uri)
    try:
        with open_checked(io.BytesIO(data), str(uri)) as img:
            if img.mode not in ("L", "P"):
                raise SegloopError(
                    f"{uri}: a class-id mask must be a single-channel PNG (mode L or P), got mode {img.mode}"
                )
            load_whole(img, data)
            return np.asarray(img, dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise SegloopError(f"{uri}: not a readable mask: {unreadable_reason(data, exc)}") from exc


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def save_mask_png(uri: str | Path, mask: np.ndarray) -> None:
    """Write an HxW uint8 class-id mask as PNG (atomic for local paths)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be HxW uint8, got {mask.dtype} {mask.shape}")
    storage.write_bytes(uri, encode_png(mask))


def save_rgb(uri: str | Path, image: np.ndarray, quality: int = 90) -> None:
    """Write an RGB array as JPEG or PNG by the URI's suffix."""
    buf = io.BytesIO()
    fmt = "PNG" if str(uri).lower().endswith(".png") else "JPEG"
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    storage.write_bytes(uri, buf.getvalue())


def colorize(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """Class-id mask -> RGB using the labels' colours."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask]


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = 0.45
) -> np.ndarray:
    """Blend coloured classes over the image; background (class 0) stays untouched."""
    color = colorize(mask, palette).astype(np.float32)
    out = image.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * color[fg]
    return out.astype(np.uint8)
