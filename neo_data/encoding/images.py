"""NEO image preparation: smart resize (factor 32) and the stored encoding of resized images.

The packer stores every image already resized to its training size, so a trainer only decodes
and normalises. Encoding (``ImageEncoding``): JPEG quality 95 with 4:4:4 chroma by default --
visually lossless for training (PSNR above 40 dB on photos), 5-10x smaller than PNG and faster
to decode; PNG for lossless; WebP as a middle ground. When the source is already a JPEG in RGB at
exactly the target size and upright, its original bytes are kept (no second generation of loss);
a JPEG at least twice its target is decoded in draft mode (:func:`prepare_image`).
``benchmarks/bench_pack.py`` prints the measured sizes and fidelity.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

FACTOR = 32  # pixels per side of one image token (16 px patches, then a 2x2 merge)
MAX_ASPECT = 200
# Decompression-bomb cap: twice Pillow's own warning limit (89,478,485 px), so every real photo
# opens and a crafted header claiming gigapixels is refused before anything is allocated.
MAX_DECODE_PIXELS = 178_956_970


class ImageRejected(ValueError):
    """An image the packer cannot use; ``reason`` is a stable snake_case drop reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def smart_resize(
    height: int,
    width: int,
    min_pixels: int,
    max_pixels: int,
    factor: int = FACTOR,
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``factor`` near the original, area in budget.

    Round each side to the nearest multiple of ``factor`` (at least ``factor``); if the area is
    above ``max_pixels`` scale both down by sqrt(area / max_pixels) and floor; if below
    ``min_pixels`` scale up by sqrt(min_pixels / area) and ceil. Aspect above 200 is rejected.
    The result is never above ``max_pixels`` (for ``max_pixels >= factor**2``): where clamping
    or ceiling overshoots, the longer side is cut back.
    """
    if height <= 0 or width <= 0:
        raise ImageRejected("image_empty", f"size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageRejected(
            "aspect_ratio_too_extreme",
            f"{width}x{height} has aspect {max(height, width) / min(height, width):.1f} > {MAX_ASPECT}",
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar * w_bar > max_pixels:
        # The 32 px clamp of a thin image and the ceil of an upscale can end above the budget
        # (where no bucket fits): shorten the longer side to what the budget leaves it.
        # ``max_pixels`` wins over ``min_pixels``; a budget below one 32x32 token keeps one.
        def cut(side: int, other: int) -> int:
            return max(factor, min(side, max_pixels // other // factor * factor))

        if h_bar >= w_bar:
            h_bar = cut(h_bar, w_bar)
            w_bar = cut(w_bar, h_bar)
        else:
            w_bar = cut(w_bar, h_bar)
            h_bar = cut(h_bar, w_bar)
    return h_bar, w_bar


JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@dataclass(frozen=True)
class ImageEncoding:
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = 95
    # JPEG chroma: 4:4:4 keeps thin coloured strokes (OCR); 4:2:0 is ~10% faster and smaller.
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:4:4"


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # encoded, at the target size
    height: int  # multiples of FACTOR
    width: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // FACTOR, self.width // FACTOR


_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decode_error_detail(e: BaseException) -> str:
    """``"<type>: <message>"`` of a decoder's error, without the memory addresses Pillow puts in
    some (``cannot identify image file <_io.BytesIO object at 0x7f...>``): a rejected row's
    detail is the same in every run, so a rerun's output has the same bytes."""
    return _OBJECT_REPR.sub("", f"{type(e).__name__}: {e}")


@contextmanager
def _decoding() -> Iterator[None]:
    """Map Pillow's errors (and its decompression-bomb warning) to drop reasons."""
    try:
        with warnings.catch_warnings():
            # Our cap (checked by _open_header from the header, before any pixel is decoded)
            # replaces Pillow's warning: a cap above its 89.5M px would otherwise be ignored.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image_too_many_pixels", str(e)) from e
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise ImageRejected("image_decode_error", decode_error_detail(e)) from e
    except RuntimeError as e:  # Pillow's AVIF plugin raises it for damaged files
        raise ImageRejected("image_decode_error", decode_error_detail(e)) from e


def _open_header(data: bytes, max_decode_pixels: int) -> Image.Image:
    """The image opened lazily (header read, no pixels yet) after the decode cap is checked."""
    if not data:
        raise ImageRejected("image_empty", "zero bytes")
    if Image.MAX_IMAGE_PIXELS is not None and max_decode_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow's own error limit (twice this) only ever raised, so our cap is the one that holds
        Image.MAX_IMAGE_PIXELS = max_decode_pixels
    with _decoding():
        img = Image.open(io.BytesIO(data))
    if img.width * img.height > max_decode_pixels:
        raise ImageRejected(
            "image_too_many_pixels",
            f"{img.width}x{img.height} above the decode cap of {max_decode_pixels} pixels",
        )
    if img.width == 0 or img.height == 0:
        raise ImageRejected("image_empty", f"size {img.width}x{img.height}")
    return img


def _orientation(img: Image.Image) -> int:
    with _decoding():
        return img.getexif().get(0x0112, 1)


def _decode(img: Image.Image, orientation: int) -> Image.Image:
    """Load the pixels of a lazily opened image; upright RGB."""
    with _decoding():
        img.load()
    if orientation != 1:  # exif_transpose copies even an upright image: only when needed
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def open_image(data: bytes, max_decode_pixels: int) -> Image.Image:
    """Decode to an upright RGB image; rejections carry a drop reason."""
    img = _open_header(data, max_decode_pixels)
    return _decode(img, _orientation(img))


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits (PIL's own convert would clip everything above 255)
        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) > 255 else 0
        img = Image.fromarray((arr >> shift).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def prepare_image(
    data: bytes,
    min_pixels: int,
    max_pixels: int,
    encoding: ImageEncoding,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
) -> PreparedImage:
    """Decode, resize to the smart-resize target with Pillow's bicubic filter, and encode.

    Only what is needed is decoded. The target comes from the header; a JPEG whose target is at
    most half its size on both sides is decoded in draft mode (libjpeg's DCT-domain downscale
    by 2, 4 or 8, never below the target), then resized: the result stays above 40 dB PSNR
    against the full decode (``benchmarks/bench_pack.py`` prints it). A plain RGB JPEG already
    at its target, stored upright, keeps its bytes: it is decoded only at 1/8 scale, to prove
    every byte of it decodes.
    """
    img = _open_header(data, max_decode_pixels)
    orientation = _orientation(img)
    w, h = img.size
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # these swap the sides
    height, width = smart_resize(upright[1], upright[0], min_pixels, max_pixels)
    jpeg = img.format == "JPEG"
    plain = jpeg and img.mode == "RGB" and orientation == 1 and encoding.format == "jpeg"
    if plain and (width, height) == upright:
        with _decoding():
            img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
        return PreparedImage(data, height, width)  # already right: keep the bytes
    if jpeg and 2 * width <= upright[0] and 2 * height <= upright[1]:
        stored = (height, width) if upright != (w, h) else (width, height)
        with _decoding():
            img.draft(img.mode, stored)
    decoded = _decode(img, orientation)
    # The target is the full image's: a draft decode is smaller, and smart resize of its size
    # may round to another grid, so resize to the target itself, never to one recomputed here.
    if decoded.size != (width, height):
        decoded = decoded.resize((width, height), Image.Resampling.BICUBIC)
    return PreparedImage(encode_image(decoded, encoding), height, width)


def resize_to_target(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """The image at its smart-resize size (Pillow bicubic); the same object if already there.
    Training data (the packer) and prompts (``neo chat``) both go through this."""
    height, width = smart_resize(img.height, img.width, min_pixels, max_pixels)
    if (width, height) == img.size:
        return img
    return img.resize((width, height), Image.Resampling.BICUBIC)


def encode_image(img: Image.Image, encoding: ImageEncoding) -> bytes:
    buf = io.BytesIO()
    if encoding.format == "jpeg":
        img.save(
            buf,
            format="JPEG",
            quality=encoding.quality,
            subsampling=JPEG_SUBSAMPLING[encoding.subsampling],
        )
    elif encoding.format == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="WEBP", quality=encoding.quality, method=4)
    return buf.getvalue()
