"""Small builders of curated rows and images for tests (no network, deterministic), on top of
:mod:`neo_data.synthetic.rows`."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from PIL import Image

from neo_data.synthetic import rows as synthetic_rows
from neo_data.synthetic.rows import ORIGINAL_PROVENANCE, curated_row, image_entry

REPO = Path(__file__).resolve().parents[1]  # the repository root


def image_bytes(
    width: int, height: int, fmt: str = "PNG", color=(200, 30, 30), mode: str = "RGB"
) -> bytes:
    img = Image.new(mode, (width, height), color if mode == "RGB" else None)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def caption_row(i: int, caption: str, images: list[bytes], source: str = "test") -> dict:
    return curated_row(
        "caption",
        f"{source}-{i:06d}",
        source,
        i,
        images=[image_entry(b) for b in images],
        captions=[{"text": caption, "provenance": ORIGINAL_PROVENANCE}],
        url=f"http://127.0.0.1/{source}/{i}.png",
    )


def conversation_row(
    i: int, turns: list[tuple[str, str]], images: list[bytes], source: str = "chat"
) -> dict:
    return curated_row(
        "conversation",
        f"{source}-{i:06d}",
        source,
        i,
        text_only=not images,
        images=[image_entry(b) for b in images],
        conversation=[{"role": r, "content": c} for r, c in turns],
    )


def text_row(i: int, text: str, source: str = "text") -> dict:
    return curated_row("text", f"{source}-{i:06d}", source, i, images=None, text=text)


def write_curated(path: str, rows: list[dict], row_group_size: int = 64) -> str:
    """The package's curated writer, with small row groups (so tests see several)."""
    return synthetic_rows.write_curated(path, rows, row_group_size)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A network namespace (only `lo`) and a PID namespace whose init is the command: if it dies,
# however it dies, the kernel ends every process it started; and if `unshare` is killed,
# --kill-child kills the command. For servers that bind every address (Ray's second node,
# torchrun's store): inside, every address is the loopback.
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


def netns_unavailable() -> str | None:
    """Why ``UNSHARE`` cannot run here, or None when it can."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return f"`{' '.join(UNSHARE)}` is not permitted here: {probe.stderr.strip()}"


# The architecture doc's checkpoint keys (section 7) and stage 1's trainable set (section 8),
# written out here rather than read from neo_model, so that the tests' expectation is independent.
PATCH_EMBEDDING_KEYS = frozenset(
    f"vision_model.embeddings.{conv}.{p}"
    for conv in ("patch_embedding", "dense_embedding")
    for p in ("weight", "bias")
)
ATTENTION_PARTS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "q_proj_hw", "k_proj_hw",
    "q_norm", "k_norm", "q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w",
)  # fmt: skip
LAYER_KEYS = frozenset(
    [f"self_attn.{p}.weight" for p in ATTENTION_PARTS]
    + [f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
    + ["input_layernorm.weight", "post_attention_layernorm.weight"]
)
HW_KEYS = frozenset(  # the H/W query/key projections and their norms
    f"self_attn.{p}.weight"
    for p in ("q_proj_hw", "k_proj_hw", "q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w")
)


def stage_1_keys(pre_buffer: int, post_llm: int) -> tuple[set[str], set[str]]:
    """``(trained, frozen)`` checkpoint keys of stage 1 for a NEO of ``pre_buffer`` + ``post_llm``
    layers: the patch embedding, the whole pre-Buffer and the post-LLM's H/W parts train; the
    token embedding, the head (``language_model.lm_head.weight``, tied or not), the final norm and
    the post-LLM's Qwen3 weights stay as they were."""
    layers = "language_model.model.layers"
    post = range(pre_buffer, pre_buffer + post_llm)
    trained = set(PATCH_EMBEDDING_KEYS)
    trained |= {f"{layers}.{i}.{k}" for i in range(pre_buffer) for k in LAYER_KEYS}
    trained |= {f"{layers}.{i}.{k}" for i in post for k in HW_KEYS}
    frozen = {f"{layers}.{i}.{k}" for i in post for k in LAYER_KEYS - HW_KEYS}
    frozen |= {
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    }
    return trained, frozen
