"""NEO image preparation: smart resize (factor 32) and the stored encoding of resized images.

The packer stores every image already resized to its training size, so a trainer only decodes
and normalises. Encoding (``ImageEncoding``): JPEG quality 95 with 4:4:4 chroma by default --
visually lossless for training (PSNR above 40 dB on photos), 5-10x smaller than PNG and faster
to decode; PNG for lossless; WebP as a middle ground. When the source is already a JPEG in RGB at
exactly the target size and upright, its original bytes are kept (no second generation of loss).
``benchmarks/bench_pack.py`` prints the measured sizes and fidelity.
"""

from __future__ import annotations

import io
import math
import warnings
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


def open_image(data: bytes, max_decode_pixels: int) -> Image.Image:
    """Decode to an upright RGB image; rejections carry a drop reason."""
    if not data:
        raise ImageRejected("image_empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Our cap, checked below before anything is decoded, replaces Pillow's warning (a
            # cap above its 89.5M px would otherwise be ignored); its error limit is raised
            # to twice our cap (only ever up: other decodes keep at least this one's cap).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if Image.MAX_IMAGE_PIXELS is not None and max_decode_pixels > Image.MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = max_decode_pixels
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_decode_pixels:
                raise ImageRejected(
                    "image_too_many_pixels",
                    f"{img.width}x{img.height} above the decode cap of {max_decode_pixels} pixels",
                )
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image_too_many_pixels", str(e)) from e
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise ImageRejected("image_decode_error", f"{type(e).__name__}: {e}") from e
    if img.width == 0 or img.height == 0:
        raise ImageRejected("image_empty", f"size {img.width}x{img.height}")
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


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
    """Decode, resize to the smart-resize target with Pillow's bicubic filter, and encode."""
    img = open_image(data, max_decode_pixels)
    resized = resize_to_target(img, min_pixels, max_pixels)
    if resized is img and _is_plain_jpeg(data) and encoding.format == "jpeg":
        return PreparedImage(data, img.height, img.width)  # already right: keep the bytes
    return PreparedImage(encode_image(resized, encoding), resized.height, resized.width)


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


def _is_plain_jpeg(data: bytes) -> bool:
    """A baseline RGB JPEG with no EXIF rotation (decoding it gives the stored pixels)."""
    if not data.startswith(b"\xff\xd8"):
        return False
    with Image.open(io.BytesIO(data)) as im:
        return im.mode == "RGB" and im.getexif().get(0x0112, 1) == 1
