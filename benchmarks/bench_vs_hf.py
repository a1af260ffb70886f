"""NEO packed training against HF transformers Qwen3 trained the usual way: padded batches, SDPA.

    .venv/bin/python benchmarks/bench_vs_hf.py                     # CUDA, bf16, NEO-2.2B, 16,384
    .venv/bin/python benchmarks/bench_vs_hf.py --preset debug --device cpu --seq-len 2048  # smoke

The trainer issue's goal: real tokens/s of NEO (one packed row per step, the NEO mask,
FlexAttention on CUDA) at least 2x those of a HF ``Qwen3ForCausalLM`` of the same dimensions
(hidden size, heads, head_dim, intermediate size, vocabulary, and as many layers as NEO's
pre-Buffer + post-LLM) trained with padded batches and ``attn_implementation="sdpa"``, on the
same GPU in the same run.

The same samples on both sides. ``--packs`` rows of ``--seq-len`` tokens are built as for
``bench_model.py`` (``neo_model.synthetic_pack.build_pack``: image-question-answer samples
around one or two images of ``--grid`` x ``--grid`` tokens, a text document filling each row
exactly: no padding on the NEO side). The HF model gets every sample with the same token count (image tokens become ordinary ids, so it
does at least as little work per token as NEO: no patch embedding, no H/W q/k), in a seeded
random order, in batches formed the usual way for padded training: a batch takes samples while
``samples x longest`` stays within ``--seq-len`` tokens (the same token budget per step as one
NEO pack); each row is right-padded to the longest, the attention mask marks the padding, and
the labels are the samples' own. Real tokens/s = sum of sample lengths / time, padding excluded.

A step is forward + backward of the loss (gradients set to None before each step, no optimizer:
its cost is the same on both sides). bf16 weights on CUDA (``.to(torch.bfloat16)``), fp32 on
CPU; gradient checkpointing on both sides for the 2.2b / 9b presets. ``--compile`` also
compiles each decoder layer on both sides (the trainer's ``train.compile``). On CPU NEO runs the
trainer's CPU path (per-sample SDPA, ``sdpa_segments``): the CPU row shows the script works,
not the GPU ratio.
"""

from __future__ import annotations

import argparse

import torch

from neo_model import config as neo_config
from neo_model.hf_baseline import hf_loss, hf_model, padded_batches, samples_of
from neo_model.synthetic_pack import Pack, build_pack, tokenizer_or_chars
from neo_model.testing import random_neo
from neo_model.timing import free_memory, time_per_call

PRESETS = neo_config.PRESETS


def one_pass(steps: list) -> None:
    """Every step once (timed as one call by ``neo_model.timing.time_per_call``)."""
    for fn in steps:
        fn()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="2.2b")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--packs", type=int, default=4, help="packed rows (the sample pool)")
    ap.add_argument("--grid", type=int, default=32, help="image side in tokens (32 = 1024 px)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over every batch")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes (compilation)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--compile", action="store_true", help="compile each decoder layer, both sides")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    checkpointing = args.checkpointing == "on" or (
        args.checkpointing == "auto" and args.preset != "debug"
    )
    cfg = PRESETS[args.preset]()
    tok = tokenizer_or_chars()
    packs = [
        build_pack(tok, args.seq_len, args.grid, cfg.image_factor, seed=args.seed + k).to(device)
        for k in range(args.packs)
    ]
    real = sum(p.length for p in packs)

    # HF Qwen3, padded batches, SDPA (the baseline) -------------------------------------------
    model = hf_model(cfg, device, dtype, checkpointing)
    if args.compile:
        for layer in model.model.layers:
            layer.compile()
    batches = [tuple(t.to(device) for t in b) for b in
               padded_batches(samples_of(packs), args.seq_len, args.seed)]  # fmt: skip
    padded = sum(int(b[0].numel()) for b in batches)

    def hf_step(m, b) -> None:
        m.zero_grad(set_to_none=True)
        hf_loss(m, *b).backward()

    free_memory(device)
    hf_steps = [lambda b=b, m=model: hf_step(m, b) for b in batches]
    hf_s = time_per_call(lambda s=hf_steps: one_pass(s), args.repeats, args.warmup, device)
    hf_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, hf_steps
    free_memory(device)

    # NEO, one packed row per step ------------------------------------------------------------
    neo = random_neo(cfg, dtype=dtype, device=device).train()
    neo.language_model.model.gradient_checkpointing = checkpointing
    if args.compile:
        for layer in neo.language_model.model.layers:
            layer.compile()
    backend = "flex" if device.type == "cuda" else "sdpa_segments"

    def neo_step(p: Pack) -> None:
        neo.zero_grad(set_to_none=True)
        out = neo(**p.columns, cu_seqlens=p.cu_seqlens, pixel_values=p.images, labels=p.labels,
                  backend=backend)  # fmt: skip
        out.loss.backward()

    neo_steps = [lambda p=p: neo_step(p) for p in packs]
    neo_s = time_per_call(lambda: one_pass(neo_steps), args.repeats, args.warmup, device)
    neo_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"NEO {args.preset} vs HF Qwen3 ({cfg.num_extra_layers}+{cfg.num_hidden_layers} layers, "
        f"hidden {cfg.hidden_size}) on {name}, {str(dtype).removeprefix('torch.')}, "
        f"torch {torch.__version__}; checkpointing {'on' if checkpointing else 'off'}, "
        f"compile {'on' if args.compile else 'off'}"
    )
    n_samples = sum(len(p.sample_lengths) for p in packs)
    print(
        f"{n_samples} samples, {real:,} real tokens ({sum(p.image_tokens for p in packs):,} "
        f"image tokens) in {args.packs} packs of {args.seq_len:,}; HF: {len(batches)} padded "
        f"batches, {padded:,} tokens with padding ({1 - real / padded:.1%} padding)"
    )
    print(f"{'model':<44}{'steps':>6}{'s/pass':>9}{'real tok/s':>12}{'vs HF':>7}{'peak GiB':>10}")
    for label, steps, secs, peak in (
        ("HF Qwen3, padded batches, SDPA (baseline)", len(batches), hf_s, hf_peak),
        (f"NEO, packed rows, NEO mask ({backend})", len(packs), neo_s, neo_peak),
    ):
        peak_s = f"{peak:>10.1f}" if peak is not None else f"{'-':>10}"
        print(f"{label:<44}{steps:>6}{secs:>9.2f}{real / secs:>12,.0f}{hf_s / secs:>7.2f}{peak_s}")


if __name__ == "__main__":
    main()
