"""Per-sample encoding: one curated row -> the token, label, T/H/W and image arrays of one sample.

:class:`SampleEncoder` is a pure function of (row, settings); drop reasons are stable snake_case:

=========================== ==========================================================
reason                      when
=========================== ==========================================================
``missing_field``           the row lacks what its kind needs (no images, no caption ...)
``unknown_kind``            ``kind`` is not caption / conversation / text
``image_decode_error``      image bytes do not decode
``image_empty``             zero bytes or a zero-sized image
``image_too_many_pixels``   above the decode cap (decompression bomb)
``aspect_ratio_too_extreme`` aspect ratio above 200
``empty_caption``           the chosen caption (or document) is blank
``template_error``          bad role, or ``<image>`` placeholders != images
``too_long_for_budget``     more tokens than the pack budget (samples are never split)
``too_many_image_tokens``   more image tokens than the per-pack image budget
``no_supervised_tokens``    nothing to learn from (e.g. a conversation without answers)
``image_above_every_bucket`` (the packer) the largest image fits no ``pack.buckets`` entry
``text_over_ratio``         (the packer) a text-only sample beyond ``pack.text_ratio``
=========================== ==========================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from neo_data.encoding.images import ImageEncoding, ImageRejected, prepare_image
from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import (
    NeoTokenizer,
    TemplateError,
    render_text,
    render_turns,
    user_content,
)
from neo_data.format.schema import IMAGE_PLACEHOLDER, SAMPLE_KINDS


class SampleRejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodeSettings:
    seq_len: int
    max_image_tokens: int  # per pack
    min_pixels: int
    max_pixels: int
    max_decode_pixels: int
    encoding: ImageEncoding
    caption_prompt: str = ""
    caption_choice: str = "first"
    recaption_ratio: float = 0.5
    seed: int = 0


@dataclass
class EncodedSample:
    input_ids: np.ndarray  # [L] int32
    labels: np.ndarray  # [L] int32, next-token targets
    t_index: np.ndarray
    h_index: np.ndarray
    w_index: np.ndarray
    image_ordinal: np.ndarray  # [L] int32, -1 for non-image tokens
    images: list[bytes]
    image_heights: list[int]
    image_widths: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_image_tokens(self) -> int:
        return int((self.image_ordinal >= 0).sum())

    @property
    def max_image_tokens_per_image(self) -> int:
        return max(
            (
                (h // 32) * (w // 32)
                for h, w in zip(self.image_heights, self.image_widths, strict=True)
            ),
            default=0,
        )

    @property
    def num_supervised(self) -> int:
        return int((self.labels >= 0).sum())


def stable_unit_float(*parts: object) -> float:
    """A deterministic pseudo-random number in [0, 1) from the parts (seeded choices)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


class SampleEncoder:
    """Turns curated rows (dicts in the curated schema) into :class:`EncodedSample`."""

    def __init__(self, tokenizer: NeoTokenizer, settings: EncodeSettings):
        self.tok = tokenizer
        self.s = settings

    def __call__(self, row: dict) -> EncodedSample:
        kind = row.get("kind")
        if kind == "text":
            text = row.get("text")
            if text is None:
                raise SampleRejected("missing_field", "text")
            if not text.strip():
                raise SampleRejected("empty_caption", "blank document")
            rendered = render_text(self.tok, text)
            prepared = []
        elif kind in ("caption", "conversation"):
            prepared = self._images(row, required=kind == "caption")
            turns = self._caption_turns(row) if kind == "caption" else self._conversation(row)
            try:
                rendered = render_turns(self.tok, turns, [p.grid for p in prepared])
            except TemplateError as e:
                raise SampleRejected("template_error", str(e)) from e
        else:
            raise SampleRejected(
                "unknown_kind", f"{kind!r}, expected one of {', '.join(SAMPLE_KINDS)}"
            )

        n = len(rendered.input_ids)
        if n > self.s.seq_len:
            raise SampleRejected(
                "too_long_for_budget", f"{n} tokens > pack budget {self.s.seq_len}"
            )
        t, h, w, ordinal = thw_indices(rendered.input_ids, [p.grid for p in prepared])
        sample = EncodedSample(
            input_ids=rendered.input_ids,
            labels=rendered.labels(),
            t_index=t,
            h_index=h,
            w_index=w,
            image_ordinal=ordinal,
            images=[p.data for p in prepared],
            image_heights=[p.height for p in prepared],
            image_widths=[p.width for p in prepared],
        )
        if sample.num_image_tokens > self.s.max_image_tokens:
            raise SampleRejected(
                "too_many_image_tokens",
                f"{sample.num_image_tokens} image tokens > pack image budget {self.s.max_image_tokens}",
            )
        if sample.num_supervised == 0:
            raise SampleRejected("no_supervised_tokens")
        return sample

    def _images(self, row: dict, required: bool) -> list:
        images = row.get("images") or []
        if required and not images:
            raise SampleRejected("missing_field", "images")
        out = []
        for k, img in enumerate(images):
            data = img.get("bytes") if img else None
            if data is None:
                raise SampleRejected("missing_field", f"images[{k}].bytes")
            try:
                out.append(
                    prepare_image(
                        data,
                        self.s.min_pixels,
                        self.s.max_pixels,
                        self.s.encoding,
                        self.s.max_decode_pixels,
                    )
                )
            except ImageRejected as e:
                raise SampleRejected(e.reason, f"images[{k}]: {e.detail}") from e
        return out

    def _caption_turns(self, row: dict) -> list[tuple[str, str]]:
        caption = self.choose_caption(row)
        if not caption.strip():
            raise SampleRejected("empty_caption")
        user = user_content(self.s.caption_prompt, len(row["images"]), IMAGE_PLACEHOLDER)
        return [("user", user), ("assistant", caption.strip())]

    def choose_caption(self, row: dict) -> str:
        """The caption to train on, by the manifest's ``caption_choice``."""
        captions = [c for c in (row.get("captions") or []) if c and c.get("text") is not None]
        if not captions:
            raise SampleRejected("missing_field", "captions")

        def origin(c: dict) -> str:
            return ((c.get("provenance") or {}).get("origin")) or "original"

        originals = [c for c in captions if origin(c) == "original"]
        recaps = [c for c in captions if origin(c) == "recaption"]
        choice = self.s.caption_choice
        if choice == "mix":
            pick_recap = stable_unit_float(self.s.seed, row["sample_id"]) < self.s.recaption_ratio
            choice = "recaption" if pick_recap else "original"
        if choice == "original" and originals:
            return originals[0]["text"]
        if choice == "recaption" and recaps:
            return recaps[-1]["text"]  # the newest recaption
        return captions[0]["text"]

    def _conversation(self, row: dict) -> list[tuple[str, str]]:
        turns = row.get("conversation")
        if not turns:
            raise SampleRejected("missing_field", "conversation")
        out = []
        for k, turn in enumerate(turns):
            if not turn or turn.get("role") is None or turn.get("content") is None:
                raise SampleRejected("missing_field", f"conversation[{k}].role/content")
            out.append((turn["role"], turn["content"]))
        return out
