"""The HF transformers baseline of the GPU benchmarks: a ``Qwen3ForCausalLM`` of NEO's language
dimensions trained the usual way, on right-padded batches with SDPA attention, over the samples
of NEO's packed rows (``benchmarks/bench_vs_hf.py`` and ``benchmarks/gpu_check.py``).

A batch takes samples, in a seeded random order, while ``samples x longest`` stays within a
token budget (the tokens of one NEO pack); image tokens are ordinary ids on the HF side.
"""

from __future__ import annotations

import random

import torch

from neo_model.synthetic_pack import Pack
from neo_model.testing import qwen3_config_like


def hf_model(cfg, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    """A HF Qwen3 with NEO's language dimensions and its layer count (pre-Buffer + post-LLM),
    SDPA attention, in training mode."""
    from transformers import Qwen3ForCausalLM

    config = qwen3_config_like(cfg, max_position_embeddings=65536, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    model = model.to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.train()


def samples_of(packs: list[Pack]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every sample of the packs as (input_ids [L], labels [L])."""
    out = []
    for p in packs:
        cu = p.cu_seqlens.tolist()
        for s, e in zip(cu[:-1], cu[1:], strict=True):
            out.append((p.columns["input_ids"][0, s:e], p.labels[0, s:e]))
    return out


def padded_batches(samples, budget: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """Seeded random order; a batch grows while ``rows x longest <= budget``; right padding."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    groups, cur = [], []
    for i in order:
        longest = max([len(samples[j][0]) for j in cur] + [len(samples[i][0])])
        if cur and (len(cur) + 1) * longest > budget:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    batches = []
    for g in groups:
        width = max(len(samples[i][0]) for i in g)
        ids = torch.zeros(len(g), width, dtype=torch.long)
        labels = torch.full((len(g), width), -100, dtype=torch.long)
        mask = torch.zeros(len(g), width, dtype=torch.long)
        for r, i in enumerate(g):
            x, y = samples[i]
            ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = x, y, 1
        batches.append((ids, labels, mask))
    return batches


def hf_loss(model, ids, labels, mask) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (our labels are already shifted: HF's own
    ``labels=`` would shift them again)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
    )
