"""Image and mask decoding that turns odd files into RGB or a clear error.

Images are decoded with EXIF orientation applied, so masks match what people see in CVAT.
RGBA, grayscale, palette and 16-bit images are converted to 8-bit RGB; truncated or corrupt
files raise `SegloopError` naming the file.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.core import storage
from components.core.errors import SegloopError

# Full SemiF bench images are 9504x6336 (60 MP); allow up to 250 MP before PIL's bomb guard.
Image.MAX_IMAGE_PIXELS = 250_000_000
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
PEEK_BYTES = 16
# PIL names in-memory files by their repr (`<_io.BytesIO object at 0x7f...>`): noise for people.
_OBJECT_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def peek(data: bytes, size: int = PEEK_BYTES) -> str:
    """The first bytes as safe, printable text: ASCII as is, anything else escaped."""
    escapes = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x27: "\\'", 0x5C: "\\\\"}
    text = "".join(escapes.get(b, chr(b) if 32 <= b < 127 else f"\\x{b:02x}") for b in data[:size])
    return text + ("..." if len(data) > size else "")


def unreadable_reason(data: bytes, exc: BaseException | None = None) -> str:
    """Why `data` cannot be decoded, in words: empty, not an image, or a damaged image."""
    if not data:
        return "empty file (0 bytes)"
    kind = next((name for sig, at, name in SIGNATURES if data[at : at + len(sig)] == sig), None)
    if exc is None or isinstance(exc, UnidentifiedImageError):
        if kind is None:
            return f"not an image (starts with '{peek(data)}')"
        return f"damaged or unsupported {kind} file ({len(data)} bytes; cannot be decoded)"
    detail = _OBJECT_REPR.sub("", str(exc)).strip(" :") or type(exc).__name__
    return f"damaged {kind or 'image'} file ({detail})"


def decode_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 array (EXIF-transposed)."""
    if not data:
        raise SegloopError(f"{source}: {unreadable_reason(data)}; replace or remove the file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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
    return decode_rgb(storage.read_bytes(uri), source=str(uri))


def image_size(uri: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the header where possible."""
    data = storage.read_bytes(uri)
    try:
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SegloopError(f"{uri}: {unreadable_reason(data, exc)}") from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(uri: str | Path) -> np.ndarray:
    """Read a class-id mask PNG (mode L or P) as an HxW uint8 array."""
    data = storage.read_bytes(uri)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "P"):
                raise SegloopError(
                    f"{uri}: a class-id mask must be a single-channel PNG (mode L or P), got mode {img.mode}"
                )
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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
