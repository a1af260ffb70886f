"""Pure curation filters: each returns ``None`` (keep) or a :class:`Drop` with a stable reason.

Reasons are stable snake_case strings (counted in the run report, stored in ``rejected/``):

================================  ============================================================
``image_decode_error``            Pillow cannot decode the bytes (corrupt, truncated, not an image)
``decompression_bomb``            width x height above ``max_decode_pixels`` (checked before decoding)
``image_too_small``               a side below ``min_side`` or pixels below ``min_pixels``
                                  (the size checks read the header only, before decoding)
``image_too_large``               a side above ``max_side`` or pixels above ``max_pixels``
``aspect_ratio``                  long side / short side above ``max_aspect_ratio``
``caption_not_utf8``              the caption's bytes are not UTF-8
``caption_empty``                 nothing but whitespace
``caption_too_short`` / ``_long`` characters outside [caption_min_chars, caption_max_chars]
``caption_too_few_words`` / ...   words outside [caption_min_words, caption_max_words] (in
                                  Chinese, Japanese, Thai, ... each character is a word)
``caption_junk``                  URL- or file-name-like, or a boilerplate phrase
``text_empty`` / ``too_short`` / ...  documents of kind ``text``
``language``                      detected language not in ``languages`` (or score too low)
================================  ============================================================
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import imagehash
import numpy as np
from PIL import Image, ImageOps

from neo_data.encoding.images import decode_error_detail, to_rgb
from neo_data.manifest.curate import FilterSpec

PHASH_SIZE = 8  # 8x8 = 64-bit perceptual hash


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as stored, before EXIF orientation (the schema's convention)
    height: int
    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF, ...
    mode: str
    phash: int  # signed 64-bit (fits Arrow int64); see phash_to_int


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def inspect_image(
    data: bytes, f: FilterSpec, budget: DecodeBudget | None = None
) -> ImageInfo | Drop:
    """Decode ``data`` fully (a truncated file fails here, not in training), check its size,
    and compute its perceptual hash on the upright image.

    The size limits (``max_decode_pixels``, then ``check_image_size``) are checked right after
    ``Image.open``, which reads the header only: a 20 KiB PNG claiming 13000x13000 costs no
    decode. The decode itself holds ``budget`` (pixels decoded at once in this process, across
    a task's download threads) for as many pixels as it decodes."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard is replaced by ``max_decode_pixels`` (checked below,
            # before any pixel is decoded); its warnings (that one, corrupt EXIF, ...) must not
            # leak into logs per image.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > f.max_decode_pixels:
                return Drop("decompression_bomb", f"{w}x{h} above {f.max_decode_pixels} pixels")
            size_drop = check_image_size(w, h, f)
            if size_drop is not None:
                return size_drop
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))  # DCT scaling: the hash needs 32x32 only
            with budget.hold(img.size[0] * img.size[1]) if budget else contextlib.nullcontext():
                img.load()
                upright = ImageOps.exif_transpose(img)
                digest = imagehash.phash(to_rgb(upright), hash_size=PHASH_SIZE)
    except Image.DecompressionBombError as e:
        return Drop("decompression_bomb", str(e))
    except _DECODE_ERRORS as e:
        return Drop("image_decode_error", decode_error_detail(e)[:300])
    return ImageInfo(w, h, img.format or "unknown", img.mode, phash_to_int(digest))


# What Pillow's decoders raise on bad bytes: OSError (truncated, broken data stream; also
# UnidentifiedImageError), SyntaxError and ValueError (bad headers), EOFError, struct.error and
# IndexError (short tables), ZeroDivisionError (zero sizes), RuntimeError (the AVIF decoder).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  ZeroDivisionError, RuntimeError)  # fmt: skip


class DecodeBudget:
    """A semaphore counted in pixels: decodes wait while the pixels being decoded would pass
    ``capacity``; an image larger than the whole budget decodes alone (when none other is)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most pixels decoded at once so far (tests, lineage of a run)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cond:
            while self.in_use and self.in_use + pixels > self.capacity:
                self._cond.wait()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


@lru_cache(maxsize=8)
def decode_budget(capacity: int) -> DecodeBudget:
    """The process's budget of ``capacity`` pixels (one per setting: the threads of a task and
    the tasks run one after another in a worker share it)."""
    return DecodeBudget(capacity)


def check_image_size(w: int, h: int, f: FilterSpec) -> Drop | None:
    if w < f.min_side or h < f.min_side:
        return Drop("image_too_small", f"{w}x{h}: a side below min_side {f.min_side}")
    if w * h < f.min_pixels:
        return Drop("image_too_small", f"{w}x{h}: below min_pixels {f.min_pixels}")
    if w > f.max_side or h > f.max_side:
        return Drop("image_too_large", f"{w}x{h}: a side above max_side {f.max_side}")
    if w * h > f.max_pixels:
        return Drop("image_too_large", f"{w}x{h}: above max_pixels {f.max_pixels}")
    ratio = max(w, h) / min(w, h)
    if ratio > f.max_aspect_ratio:
        return Drop("aspect_ratio", f"{w}x{h}: ratio {ratio:.2f} above {f.max_aspect_ratio}")
    return None


def phash_to_int(h: imagehash.ImageHash) -> int:
    """The 64 hash bits as a signed int64 (two's complement), the order imagehash prints."""
    bits = np.asarray(h.hash, dtype=np.uint8).ravel()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

_URL = re.compile(r"^\s*(?:(?:https?|ftp)://|www\.)\S+\s*$", re.IGNORECASE)
_FILENAME = re.compile(
    r"^\s*[\w\-. ()]*\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|avif)\s*$", re.IGNORECASE
)
_CAMERA = re.compile(r"^\s*(?:img|dsc|dscn|dcim|pxl|screenshot)[_\- ]?\d[\w\-]*\s*$", re.IGNORECASE)
# Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan):
# each character counts as a word there (what a segmenter's word count approaches for the
# short captions these limits are about); elsewhere a word is a run of word characters.
_NO_SPACES = (
    "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
_WORD = re.compile(f"[{_NO_SPACES}]|[^\\W{_NO_SPACES}]+")


def decode_text(value: object) -> str | Drop:
    """A caption cell as text: bytes must be UTF-8 (CSV cells arrive as bytes), and text must
    be encodable as UTF-8 (a JSON ``\\ud800`` escape decodes to a lone surrogate, which no
    Parquet file can hold): the row is rejected, never repaired."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            return Drop("caption_not_utf8", f"byte {e.start}: {value[e.start : e.start + 4]!r}")
    text = str(value)
    return unencodable(text) or text


def unencodable(text: str) -> Drop | None:
    """A Drop when ``text`` holds a lone surrogate (not encodable as UTF-8), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return Drop("caption_not_utf8", f"character {e.start}: lone surrogate {text[e.start]!a}")
    return None


def check_caption(text: str, f: FilterSpec) -> Drop | None:
    """Length, word count and junk checks of an alt-text caption."""
    stripped = text.strip()
    if not stripped:
        return Drop("caption_empty")
    n = len(stripped)
    if n < f.caption_min_chars:
        return Drop("caption_too_short", f"{n} chars < {f.caption_min_chars}")
    if n > f.caption_max_chars:
        return Drop("caption_too_long", f"{n} chars > {f.caption_max_chars}")
    words = len(_WORD.findall(stripped))
    if words < f.caption_min_words:
        return Drop("caption_too_few_words", f"{words} words < {f.caption_min_words}")
    if words > f.caption_max_words:
        return Drop("caption_too_many_words", f"{words} words > {f.caption_max_words}")
    return check_junk(stripped, f) if f.junk_captions else None


def check_junk(text: str, f: FilterSpec) -> Drop | None:
    if _URL.match(text):
        return Drop("caption_junk", "url")
    if _FILENAME.match(text) or _CAMERA.match(text):
        return Drop("caption_junk", "file_name")
    lower = text.lower()
    for phrase in f.boilerplate:
        if phrase.lower() in lower:
            return Drop("caption_junk", f"boilerplate: {phrase}")
    return None


def check_text(text: str, f: FilterSpec) -> Drop | None:
    """Length checks of a text-only document."""
    n = len(text.strip())
    if n == 0:
        return Drop("text_empty")
    if n < f.text_min_chars:
        return Drop("text_too_short", f"{n} chars < {f.text_min_chars}")
    if n > f.text_max_chars:
        return Drop("text_too_long", f"{n} chars > {f.text_max_chars}")
    return None


_IDENTIFIER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _load_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _identifier():
    """py3langid's identifier with normalised probabilities; its model (an .npz inside the
    wheel, no pickle, ~100 MiB loaded) loads once per process, in about 0.4 s. The lock keeps
    a task's download threads from each loading a copy at the same moment."""
    with _IDENTIFIER_LOCK:
        return _load_identifier()


def detect_language(text: str) -> tuple[str, float]:
    lang, score = _identifier().classify(text)
    return lang, float(score)


def check_language(text: str, f: FilterSpec) -> tuple[Drop | None, str]:
    """Keep only ``f.languages``; returns the drop (if any) and the decision for lineage,
    e.g. ``"en:0.99"`` or ``"not_checked"``."""
    if not f.languages:
        return None, "not_checked"
    if len(text.strip()) < f.language_min_chars:
        return None, "too_short_to_judge"
    lang, score = detect_language(text)
    decision = f"{lang}:{score:.2f}"
    if lang not in f.languages:
        return Drop("language", f"{decision} not in {f.languages}"), decision
    if score < f.min_language_score:
        return Drop("language", f"{decision} below {f.min_language_score}"), decision
    return None, decision
