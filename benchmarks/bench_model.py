"""NEO model benchmarks: training throughput and MFU, the cost of the mixed mask, generation.

    .venv/bin/python benchmarks/bench_model.py                      # CUDA, bf16, NEO-2.2B, 16,384
    .venv/bin/python benchmarks/bench_model.py --preset 9b --seq-len 8192
    .venv/bin/python benchmarks/bench_model.py --preset debug --device cpu   # smoke run, < 60 s

Inputs are real (``neo_model.synthetic_pack.build_pack``): one packed row of ``--seq-len``
tokens made of several samples (``cu_seqlens``), each rendered with the ``neo1_0`` template
(``neo_data.encoding.tokens.render_turns``) around one or two images of ``--grid`` x ``--grid``
tokens (32 x 32 tokens = a 1024 x 1024 px image; some samples use 3/4- and 1/2-size grids),
T/H/W indices from ``neo_data.encoding.positions.thw_indices``, labels on the assistant answers;
a text-only document (``render_text``) fills the rest exactly, so the row has no padding. Pixels
are random (normalised like real images); weights are random (the model's own initialisation,
``neo_model.testing.random_neo``). Everything goes through the model's public API
(``NeoChatModel.forward``, ``neo_model.attention.attend`` / ``build_mask``,
``neo_model.generate.generate``); weights are cast with ``.to(dtype)``.

Three tables; ratios are against a baseline measured in the same run on the same device.

(a) Training step (forward + backward of the loss, gradients set to None before each step; no
    optimizer). Baseline: the same tokens, images, positions and labels with a plain causal mask
    (one sample, no bidirectional images). On CUDA the attention is FlexAttention (compiled, block
    mask) and gradient checkpointing is on for the 2.2b / 9b presets (``--checkpointing``);
    ``--sdpa-reference`` adds the dense-mask SDPA path. On CPU FlexAttention has no backward, so
    both rows use SDPA with the dense mask.

    FLOPs of one step (model FLOPs: recomputation by checkpointing is not counted)::

        F = 6 * N * T  +  6 * P * I  +  6 * n_layers * n_heads * (d_qk + d_v) * A

    * ``T`` tokens in the row, ``I`` of them image tokens.
    * ``N``: weights of every ``nn.Linear`` of the decoder layers plus ``lm_head`` (the
      embedding lookup, norms, RoPE and softmax are not counted). With tied embeddings the
      matrix counts once, as ``lm_head``.
    * ``P``: patch-embedding weight uses per image token: conv1 (3*16*16 -> 1024) runs on
      ``downsample**2`` = 4 patches, conv2 (1024*2*2 -> hidden) once.
    * Attention: per (query, key) pair and head, ``q.k`` is ``2 * d_qk`` FLOPs and ``p.v`` is
      ``2 * d_v`` FLOPs in the forward pass, with NEO's ``d_qk = 2 * head_dim`` (T|H|W = 256)
      and ``d_v = head_dim`` (128).
    * 6 = 2 FLOPs per multiply-add x 3 (the backward pass costs twice the forward).
    * ``A`` the attended pairs. "causal" (the usual convention for MFU): ``A = T (T + 1) / 2``
      (~ T^2 / 2), as if the row were one causal sequence. "mask-aware": the pairs NEO's mask
      allows, ``A = sum_samples n (n + 1) / 2 + sum_images g (g - 1) / 2`` (``g`` tokens per
      image: the upper triangle the bidirectional image block adds).

    MFU = F / step time / ``--peak-tflops`` (989 TFLOP/s: H100 SXM bf16 dense). Printed only
    on CUDA.

(b) Attention only (one layer's shape: B = 1, the preset's heads / kv heads, ``d_qk``, ``d_v``):
    FlexAttention, compiled, with block masks (128-token blocks) from ``build_mask`` /
    ``create_block_mask``, forward + backward, for the plain causal mask (baseline), NEO's mask
    over the same tokens as one sample, the packed causal (document) mask and NEO's packed
    mixed mask (the training mask). ``tokens/s`` ratio = causal time / mask time (goal: NEO's
    mask >= 0.9 x causal); ``TFLOP/s`` counts each mask's own pairs (kernel efficiency). The
    mask-build time is listed separately (the model builds the mask once per forward). On CPU:
    eager FlexAttention, forward only; it materialises the full score matrix, so block sparsity
    does not show there and the ratios mean something on CUDA only.

(c) Generation (``neo_model.generate.generate``, greedy, KV cache, SDPA): batch 1 and 16,
    each prompt one image (``--grid`` x ``--grid`` tokens) plus a question, ``--new-tokens``
    (128) new tokens per row (no stop token, so every row generates all of them); new tokens/s
    = batch * new / time, prefill included. A one-token generation (prefill + first token) is
    timed too; decode ms/step = (t(new) - t(1)) / (new - 1). Baseline: batch 1.

Timing (``neo_model.timing.time_per_call``): CUDA events around ``--steps`` calls after
``--warmup`` calls (which on CUDA include ``torch.compile``); ``time.perf_counter`` on CPU.
"""

from __future__ import annotations

import argparse
import time
import warnings
from functools import partial

import numpy as np
import torch

from neo_data.encoding.tokens import render_turns, user_content
from neo_model import config as neo_config
from neo_model.attention import FLEX_BLOCK, build_mask
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.synthetic_pack import (
    QUESTIONS,
    Pack,
    build_pack,
    grid_side,
    random_image,
    tokenizer_or_chars,
)
from neo_model.testing import random_neo
from neo_model.timing import attention_step, free_memory, sync, time_per_call
from neo_model.train.flops import FlopCount

PRESETS = neo_config.PRESETS
H100_BF16_DENSE_TFLOPS = 989.0

FLOP_CONVENTION = {"causal": "standard", "neo": "mask_aware"}  # FlopCount.step's keys


def train_flops(flops: FlopCount, pack: Pack, mask: str) -> int:
    """Model FLOPs of one forward + backward over ``pack`` under ``mask`` (module docstring;
    the counts are ``neo_model.train.flops``, the trainer's)."""
    return flops.step(pack.sample_lengths, pack.image_sizes)[FLOP_CONVENTION[mask]]


# ---------------------------------------------------------------------------------------------
# (a) training step
# ---------------------------------------------------------------------------------------------


def bench_train(model, pack: Pack, args, device) -> list[tuple]:
    """Rows ``(name, seconds, peak GiB, causal FLOPs, mask-aware FLOPs)``; the first is the baseline."""
    model.train()
    flops = FlopCount.of(model, model.config)
    causal_cols = dict(
        pack.columns, image_ordinal=torch.full_like(pack.columns["image_ordinal"], -1)
    )
    one_sample = {"sample_ids": torch.zeros_like(pack.labels)}
    packed = {"cu_seqlens": pack.cu_seqlens}
    backend = "flex" if device.type == "cuda" else "sdpa"
    cases = [  # (name, columns, sample ids, backend, pairs for the mask-aware count)
        (f"{backend}, plain causal (baseline)", causal_cols, one_sample, backend, "causal"),
        (f"{backend}, NEO mixed, packed", pack.columns, packed, backend, "neo"),
    ]
    if device.type == "cuda" and args.sdpa_reference:
        cases.append(("sdpa dense mask, NEO mixed, packed", pack.columns, packed, "sdpa", "neo"))
    if device.type != "cuda":  # the CPU training path: one dense block per packed sample
        cases.append(
            ("sdpa per sample, NEO mixed, packed", pack.columns, packed, "sdpa_segments", "neo")
        )

    rows = []
    for name, cols, mask_kwargs, backend, mask in cases:
        free_memory(device)

        def step(cols=cols, mask_kwargs=mask_kwargs, backend=backend) -> None:
            model.zero_grad(set_to_none=True)
            out = model(
                **cols,
                **mask_kwargs,
                pixel_values=pack.images,
                labels=pack.labels,
                backend=backend,
            )
            out.loss.backward()

        try:
            seconds = time_per_call(step, args.steps, args.warmup, device)
        except torch.OutOfMemoryError:
            rows.append((name, None, None, 0, 0))
            model.zero_grad(set_to_none=True)
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(
            (
                name,
                seconds,
                peak,
                train_flops(flops, pack, "causal"),
                train_flops(flops, pack, mask),
            )
        )
    model.zero_grad(set_to_none=True)
    return rows


# ---------------------------------------------------------------------------------------------
# (b) attention only
# ---------------------------------------------------------------------------------------------


def causal_block_mask(length: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    padded = -(-length // FLEX_BLOCK) * FLEX_BLOCK

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return create_block_mask(causal, 1, None, padded, padded, device=device, BLOCK_SIZE=FLEX_BLOCK)


def bench_attention(cfg, pack: Pack, args, device, dtype) -> list[tuple]:
    """Rows ``(name, build s, computed %, partial %, pairs, seconds, FLOPs)``; first = baseline."""
    n = pack.length
    sample_ids = torch.repeat_interleave(
        torch.arange(len(pack.sample_lengths), device=device),
        torch.tensor(pack.sample_lengths, device=device),
    )[None]
    ordinal = pack.columns["image_ordinal"]
    no_image = torch.full_like(ordinal, -1)
    one_sample = torch.zeros_like(sample_ids)
    builders = [
        ("causal (baseline)", "causal", lambda: causal_block_mask(n, device)),
        (
            "NEO mixed, one sample",
            "neo_one_sample",
            lambda: build_mask(one_sample, ordinal, "flex"),
        ),
        (
            "packed causal (document)",
            "packed_causal",
            lambda: build_mask(sample_ids, no_image, "flex"),
        ),
        ("NEO mixed, packed (training)", "neo", lambda: build_mask(sample_ids, ordinal, "flex")),
    ]
    heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    backward = device.type == "cuda"
    q = torch.randn(1, heads, n, 2 * d, device=device, generator=gen, dtype=dtype)
    k = torch.randn(1, kv_heads, n, 2 * d, device=device, generator=gen, dtype=dtype)
    v = torch.randn(1, kv_heads, n, d, device=device, generator=gen, dtype=dtype)
    grad_out = torch.randn(1, heads, n, d, device=device, generator=gen, dtype=dtype)
    for x in (q, k, v):
        x.requires_grad_(backward)
    per_pair = 2 * heads * (2 * d + d) * (3 if backward else 1)

    rows = []
    for name, pairs_key, build in builders:
        build()
        sync(device)
        t0 = time.perf_counter()
        reps = max(1, min(args.steps, 3))
        for _ in range(reps):
            mask = build()
        sync(device)
        build_s = (time.perf_counter() - t0) / reps
        total = mask.kv_num_blocks.shape[-1] ** 2
        n_partial = int(mask.kv_num_blocks.sum())
        full = int(mask.full_kv_num_blocks.sum()) if mask.full_kv_num_blocks is not None else 0

        step = attention_step(q, k, v, mask, d**-0.5, grad_out if backward else None)
        free_memory(device)
        seconds = time_per_call(step, args.steps, args.warmup, device)
        pairs = pack.pairs(pairs_key)
        rows.append(
            (
                name,
                build_s,
                100 * (n_partial + full) / total,
                100 * n_partial / total,
                pairs,
                seconds,
                per_pair * pairs,
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# (c) generation
# ---------------------------------------------------------------------------------------------


def bench_generate(model, tok, args, device) -> list[tuple]:
    """Rows ``(batch, prompt tokens, 1-token s, total s, new tokens)``; batch 1 first."""
    model.eval()
    factor = model.config.image_factor
    g = grid_side(args.seq_len, args.grid)
    rng = np.random.default_rng(1)
    rows = []
    for batch in args.gen_batches:
        prompts = []
        for i in range(batch):
            turns = [("user", user_content(QUESTIONS[i % len(QUESTIONS)], 1))]
            rendered = render_turns(tok, turns, [(g, g)], add_generation_prompt=True)
            prompts.append(Prompt(rendered.input_ids, [random_image(rng, g, g, factor)]))
        prompt_tokens = max(len(p.input_ids) for p in prompts)
        free_memory(device)
        new = args.new_tokens
        reps = max(1, min(args.steps, 3))
        results: list[list[list[int]]] = []

        def run(max_new: int, results=results, prompts=prompts) -> None:
            params = SamplingParams(max_new_tokens=max_new, temperature=0.0, stop_id=-1)
            results.append(generate(model, prompts, params))

        warmup = min(args.warmup, 1)
        first = time_per_call(partial(run, 1), reps, warmup, device)
        total = time_per_call(partial(run, new), reps, warmup, device)
        assert all(len(r) == new for r in results[-1]), "every row generates --new-tokens tokens"
        rows.append((batch, prompt_tokens, first, total, new))
    return rows


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{spec}}"


def report_train(model, pack: Pack, args, device, checkpointing: bool) -> None:
    cuda = device.type == "cuda"
    flops = FlopCount.of(model, model.config)
    kernel = (
        "FlexAttention (compiled, block mask)"
        if cuda
        else "SDPA + dense mask (CPU: FlexAttention has no backward)"
    )
    print(
        f"\n(a) training step, forward + backward of the loss: {kernel}, "
        f"gradient checkpointing {'on' if checkpointing else 'off'}, {steps_note(args)}"
    )
    print(
        "    F = 6*N*T + 6*P*I + 6*layers*heads*(d_qk+d_v)*A; "
        "causal A = T(T+1)/2, mask-aware A = the NEO mask's pairs"
    )
    tera = 1e12
    print(
        f"    per step: 6NT {6 * flops.dense * pack.length / tera:.3g} TFLOP, attention "
        f"{6 * flops.attn * pack.pairs('causal') / tera:.3g} (causal) / "
        f"{6 * flops.attn * pack.pairs('neo') / tera:.3g} (mask-aware) TFLOP; total "
        f"{train_flops(flops, pack, 'causal') / tera:.3g} / {train_flops(flops, pack, 'neo') / tera:.3g} TFLOP"
        + (f"; peak {args.peak_tflops:.0f} TFLOP/s" if cuda else "")
    )
    rows = bench_train(model, pack, args, device)
    base = rows[0][1]
    print(
        f"{'mask':<38}{'ms/step':>10}{'tokens/s':>11}{'vs causal':>11}{'TFLOP/s':>9}"
        f"{'MFU %':>8}{'MFU mask %':>12}{'peak GiB':>10}"
    )
    peak = args.peak_tflops * tera
    for name, seconds, mem, f_causal, f_mask in rows:
        if seconds is None:
            print(f"{name:<38}{'out of memory':>21}")
            continue
        mfu, mfu_mask = (100 * f_causal / seconds / peak, 100 * f_mask / seconds / peak)
        print(
            f"{name:<38}{seconds * 1e3:>10.1f}{pack.length / seconds:>11,.0f}"
            f"{fmt(base / seconds if base else None, '.2f', 11)}{f_causal / seconds / tera:>9.3g}"
            f"{fmt(mfu if cuda else None, '.1f', 8)}{fmt(mfu_mask if cuda else None, '.1f', 12)}"
            f"{fmt(mem, '.1f', 10)}"
        )
    print(
        "    TFLOP/s and MFU: causal convention; MFU mask: only the pairs NEO's mask attends"
        if cuda
        else "    MFU only on CUDA; TFLOP/s: causal convention"
    )


def report_attention(cfg, pack: Pack, args, device, dtype) -> None:
    cuda = device.type == "cuda"
    mode = "compiled, forward + backward" if cuda else "eager, FORWARD ONLY (CPU: no backward)"
    print(
        f"\n(b) attention only, one layer: FlexAttention {mode}, B=1, heads "
        f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}, d_qk {2 * cfg.head_dim}, "
        f"d_v {cfg.head_dim}, {pack.length:,} tokens, {FLEX_BLOCK}-token blocks, {steps_note(args)}"
    )
    rows = bench_attention(cfg, pack, args, device, dtype)
    base, base_flops = rows[0][5], rows[0][6]
    print(
        f"{'mask':<30}{'build ms':>9}{'blocks %':>9}{'partial %':>10}{'pairs M':>10}"
        f"{'ms':>9}{'tokens/s':>12}{'vs causal':>10}{'TFLOP/s':>9}{'vs causal':>10}"
    )
    for name, build_s, computed, part, pairs, seconds, f in rows:
        print(
            f"{name:<30}{build_s * 1e3:>9.1f}{computed:>9.1f}{part:>10.1f}{pairs / 1e6:>10.2f}"
            f"{seconds * 1e3:>9.2f}{pack.length / seconds:>12,.0f}{base / seconds:>10.2f}"
            f"{f / seconds / 1e12:>9.3g}{(f / seconds) / (base_flops / base):>10.2f}"
        )
    verdict = ", ".join(
        f"{row[0]}: {base / row[5]:.2f}x {'ok' if base / row[5] >= 0.9 else 'BELOW GOAL'}"
        for row in rows[1:]
        if row[0].startswith("NEO")
    )
    print(f"    goal: NEO mask >= 0.9 x causal tokens/s -> {verdict}")
    print(
        "    blocks %: blocks computed of the full grid (partial: mask_mod evaluated); "
        "TFLOP/s: each mask's own pairs"
    )
    if not cuda:
        print(
            "    CPU: eager FlexAttention materialises all scores, block sparsity does not pay off; "
            "the ratios mean something on CUDA only"
        )


def report_generate(model, tok, args, device) -> None:
    g = grid_side(args.seq_len, args.grid)
    print(
        f"\n(c) generation (neo_model.generate, greedy, KV cache, SDPA): prompt = 1 image "
        f"({g}x{g} tokens) + question, {args.new_tokens} new tokens per row, "
        f"{max(1, min(args.steps, 3))} runs after {min(args.warmup, 1)} warm-up"
    )
    rows = bench_generate(model, tok, args, device)
    print(
        f"{'batch':>5}{'prompt tok':>11}{'1-token ms':>11}{'decode ms/step':>15}{'total s':>9}"
        f"{'new tok/s':>11}{'vs batch 1':>11}"
    )
    base_rate = None
    for batch, prompt_tokens, first, total, new in rows:
        rate = batch * new / total
        base_rate = base_rate or rate
        decode = (total - first) / max(new - 1, 1)
        print(
            f"{batch:>5}{prompt_tokens:>11}{first * 1e3:>11.1f}{decode * 1e3:>15.2f}"
            f"{total:>9.2f}{rate:>11.1f}{rate / base_rate:>11.2f}"
        )
    print(
        "    1-token ms: generate() with max_new_tokens=1 (prefill + first token); decode ms/step = "
        f"(total - 1-token) / {max(args.new_tokens - 1, 1)}; new tok/s = batch * new / total"
    )


def steps_note(args) -> str:
    return f"{args.steps} steps after {args.warmup} warm-up"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="2.2b")
    ap.add_argument("--seq-len", type=int, default=16_384)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--grid", type=int, default=32, help="image side in tokens (32 = 1024 px)")
    ap.add_argument(
        "--checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="gradient checkpointing in (a); auto: on for 2.2b / 9b",
    )
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gen-batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    ap.add_argument(
        "--sdpa-reference",
        action="store_true",
        help="(a) on CUDA: also time the SDPA dense-mask path (slow, memory hungry)",
    )
    ap.add_argument("--tables", default="abc", help="which tables to run, e.g. 'ab'")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device (use --device cpu --preset debug)")
    dtype = (
        torch.bfloat16 if (args.dtype or ("bf16" if cuda else "fp32")) == "bf16" else torch.float32
    )
    cfg = PRESETS[args.preset]()
    checkpointing = {"on": True, "off": False}.get(args.checkpointing, args.preset != "debug")
    tok = tokenizer_or_chars()
    pack = build_pack(tok, args.seq_len, args.grid, cfg.image_factor)
    model = random_neo(cfg, dtype=dtype, device=device)
    model.language_model.model.gradient_checkpointing = checkpointing
    flops = FlopCount.of(model, model.config)

    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    g = grid_side(args.seq_len, args.grid)
    print(f"NEO {args.preset} on {where}, {str(dtype)[6:]}, torch {torch.__version__}")
    print(
        f"config: {cfg.num_extra_layers}+{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, q/k {2 * cfg.head_dim}, "
        f"v {cfg.head_dim}; {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters, "
        f"N = {flops.dense / 1e9:.3f} B in matmuls, P = {flops.patch / 1e6:.1f} M per image token"
    )
    print(
        f"pack: {pack.length:,} tokens = {len(pack.sample_lengths)} samples (lengths "
        f"{min(pack.sample_lengths)}..{max(pack.sample_lengths)}), {len(pack.images)} images of "
        f"up to {g}x{g} tokens ({g * cfg.image_factor} px), {pack.image_tokens:,} image tokens "
        f"({100 * pack.image_tokens / pack.length:.0f}%); tokenizer {tok.spec}"
    )
    print(
        f"attended pairs: causal {pack.pairs('causal'):,}, NEO mask {pack.pairs('neo'):,} "
        f"({100 * pack.pairs('neo') / pack.pairs('causal'):.1f}% of causal)"
    )
    if pack.length <= 4096:  # self-check of the pair count against the model's own dense mask
        ids = torch.repeat_interleave(
            torch.arange(len(pack.sample_lengths)), torch.tensor(pack.sample_lengths)
        )
        dense = build_mask(ids[None], pack.columns["image_ordinal"], "sdpa").mask
        assert int(dense.sum()) == pack.pairs("neo"), (int(dense.sum()), pack.pairs("neo"))
    if cuda and args.warmup == 0:
        print("note: --warmup 0 on CUDA: the timings include torch.compile")
    pack = pack.to(device)

    if "a" in args.tables:
        report_train(model, pack, args, device, checkpointing)
    if "b" in args.tables:
        free_memory(device)
        report_attention(cfg, pack, args, device, dtype)
    if "c" in args.tables:
        free_memory(device)
        report_generate(model, tok, args, device)


if __name__ == "__main__":
    main()
