"""One prepared GPU check: on one H100/H200 (torch + transformers, no Ray), in under 8 minutes,
one JSON and one table.

    python benchmarks/gpu_check.py --out runs/gpu_check      # make gpu-check
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc   # the same code on CPU, debug preset

Sections (each guarded: a failure is recorded in the JSON with its traceback, the rest still run):

* ``train_mfu_eager`` / ``train_mfu_compiled``: NEO-2.2B training steps on one packed row of
  16,384 tokens (``neo_model.synthetic_pack.build_pack``), bf16, FSDP2 on one rank (a
  single-process nccl group; gloo on CPU) built by the trainer's own
  ``neo_model.train.stages.build_stage_model`` (``train.compile`` on or off; stage ``pretrain``:
  the stage-1 trainable set, so frozen-corrected differs), a step = forward + backward of the
  weighted loss, gradient clipping, AdamW (``neo_model.train.optim.build_optimizer``). MFU three
  ways (``neo_model.train.flops``: standard, mask-aware, frozen-corrected) of ``--peak-tflops``.
* ``attention``: compiled FlexAttention forward + backward at NEO-2.2B's head shapes on the same
  row: NEO's mask against document-causal (the same samples, no image blocks), both block masks
  from ``build_mask(..., "flex")``; build time of each mask.
* ``vs_hf``: real tokens/s of NEO (packed row, NEO mask) against HF ``Qwen3ForCausalLM`` of the
  same dimensions on padded batches with SDPA (``neo_model.hf_baseline``), forward + backward,
  the same samples (goal: 3x).
* ``generation``: tokens/s of ``neo_model.generate.generate`` at batch 1 and 8 (image prompts).
* ``cuda_tests``: the CUDA-only tests (``pytest -m gpu`` over the test files that skip without
  CUDA); the dry run only collects them.

Peak memory: ``torch.cuda.max_memory_allocated`` per section (reset before each). Timings:
``neo_model.timing.time_per_call`` (CUDA events, synchronised). ``--dry-run``: CPU, the debug
preset, 256-token rows, one step each (FlexAttention on CPU: forward only; compile is CUDA-only,
so both train rows run eager).

What it depends on outside the model: ``TrainSpec`` / ``InitSpec`` (manifest fields ``init``,
``output``, ``steps``, ``use_gpu``, ``compile``, ``activation_checkpointing``,
``peak_tflops``), ``setup_distributed``, ``build_stage_model``, ``build_optimizer(model, spec,
stage, steps)``, ``autocast``, ``neo_model.loss.loss_weights`` and ``FlopCount``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from neo_data.encoding.tokens import render_turns, user_content
from neo_data.manifest.train import InitSpec, TrainSpec
from neo_model.attention import build_mask, sample_ids_from_cu_seqlens
from neo_model.config import PRESETS
from neo_model.generate import Prompt, SamplingParams, generate_steps
from neo_model.hf_baseline import hf_loss, hf_model, padded_batches, samples_of
from neo_model.loss import loss_weights
from neo_model.synthetic_pack import QUESTIONS, Pack, build_pack, random_image, tokenizer_or_chars
from neo_model.testing import random_neo
from neo_model.timing import attention_step, free_memory, sync, time_per_call
from neo_model.train.flops import FlopCount
from neo_model.train.optim import build_optimizer
from neo_model.train.parallelize import autocast, setup_distributed
from neo_model.train.stages import build_stage_model

REPO = Path(__file__).resolve().parent.parent
PRESET_NAMES = {"2.2b": "neo_2_2b", "9b": "neo_9b", "debug": "debug"}
GiB = 2**30


class Check:
    """What every section shares: device, dtype, preset, the packed rows, the tokenizer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.dtype = torch.float32 if self.dry else torch.bfloat16
        self.preset = "debug" if self.dry else args.preset
        self.cfg = PRESETS[self.preset]()
        self.seq_len = 256 if self.dry else args.seq_len
        self.steps, self.warmup = (1, 0) if self.dry else (args.steps, args.warmup)
        self.tok = tokenizer_or_chars()
        factor = self.cfg.image_factor
        self.packs = [
            build_pack(self.tok, self.seq_len, args.grid, factor, seed=k).to(self.device)
            for k in range(1 if self.dry else args.packs)
        ]

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / GiB


def process_group(device: torch.device) -> None:
    """A single-process group (nccl on CUDA, gloo on CPU) before the trainer's setup sees none."""
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(0)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def train_inputs(pack: Pack, device: torch.device) -> dict:
    """The trainer's ``[1, L]`` inputs of one synthetic row (it has no padding)."""
    ids = sample_ids_from_cu_seqlens(pack.cu_seqlens, pack.length)[None].to(device)
    return {**pack.columns, "sample_ids": ids, "pixel_values": pack.images, "labels": pack.labels}


def train_mfu(check: Check, compiled: bool) -> dict:
    """FSDP2 (one rank) training steps of the preset on the first row; MFU three ways."""
    out = Path(check.args.out) / "train"
    spec = TrainSpec(
        init=InitSpec(kind="random", preset=PRESET_NAMES[check.preset]),
        output=str(out),
        steps=check.steps + check.warmup,
        use_gpu=check.device.type == "cuda",
        compile=compiled,
        activation_checkpointing=check.preset != "debug",
        peak_tflops=check.args.peak_tflops,
    )
    process_group(check.device)
    env = setup_distributed(spec)
    free_memory(check.device)
    model, cfg, trained = build_stage_model(spec, "pretrain", env)
    model.train()
    opt, _ = build_optimizer(model, spec, "pretrain", spec.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    pack = check.packs[0]
    batch = train_inputs(pack, env.device)
    weights = loss_weights(batch["labels"], batch["sample_ids"], spec.loss_weighting)
    total = float(weights.sum())

    def step() -> None:
        with autocast(env.device):
            loss = model(**batch, loss_weights=weights).loss
        (loss / total).backward()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = time_per_call(step, check.steps, check.warmup, env.device)
    flops = FlopCount.of(model, cfg).step(pack.sample_lengths, pack.image_sizes)
    peak = spec.peak_tflops * 1e12
    result = {
        "compiled": compiled and env.device.type == "cuda",
        "tokens": pack.length,
        "image_tokens": pack.image_tokens,
        "samples": len(pack.sample_lengths),
        "trainable_tensors": len(trained),
        "step_s": seconds,
        "tokens_per_s": pack.length / seconds,
        "tflops": {k: v / seconds / 1e12 for k, v in flops.items()},
        "mfu": {k: v / seconds / peak for k, v in flops.items()},
        "peak_gib": check.peak_gib(),
    }
    return result  # the model and optimizer go with this frame


def attention(check: Check) -> dict:
    """Flex forward + backward (CPU: forward only), NEO mask vs document-causal, same row."""
    pack, device, cfg = check.packs[0], check.device, check.cfg
    ids = sample_ids_from_cu_seqlens(pack.cu_seqlens, pack.length)[None].to(device)
    ordinal = pack.columns["image_ordinal"]
    heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    backward = device.type == "cuda"
    shapes = ((heads, 2 * d), (kv_heads, 2 * d), (kv_heads, d))
    q, k, v = (
        torch.randn(1, h, pack.length, w, device=device, generator=gen, dtype=check.dtype)
        for h, w in shapes
    )
    grad_out = torch.randn(1, heads, pack.length, d, device=device, generator=gen, dtype=q.dtype)
    for x in (q, k, v):
        x.requires_grad_(backward)
    rows = {}
    for name, image_ordinal, pairs in (
        ("document_causal", torch.full_like(ordinal, -1), pack.pairs("packed_causal")),
        ("neo", ordinal, pack.pairs("neo")),
    ):
        sync(device)
        t0 = time.perf_counter()
        mask = build_mask(ids, image_ordinal, "flex")
        sync(device)
        build_s = time.perf_counter() - t0

        step = attention_step(q, k, v, mask, d**-0.5, grad_out if backward else None)
        free_memory(device)
        seconds = time_per_call(step, check.steps, check.warmup, device)
        rows[name] = {"mask_build_s": build_s, "seconds": seconds, "pairs": pairs,
                      "pairs_per_s": pairs / seconds, "peak_gib": check.peak_gib()}  # fmt: skip
    neo, doc = rows["neo"], rows["document_causal"]
    return {
        "backward": backward,
        **rows,
        "time_ratio_neo_vs_document": neo["seconds"] / doc["seconds"],
        "throughput_ratio_neo_vs_document": neo["pairs_per_s"] / doc["pairs_per_s"],
    }


def one_pass(steps: list) -> None:
    for fn in steps:
        fn()


def vs_hf(check: Check) -> dict:
    """Real tokens/s, forward + backward (no optimizer), NEO packed vs HF padded + SDPA."""
    device, dtype, cfg = check.device, check.dtype, check.cfg
    checkpointing = check.preset != "debug"
    real = sum(p.length for p in check.packs)
    batches = [tuple(t.to(device) for t in b) for b in
               padded_batches(samples_of(check.packs), check.seq_len, seed=0)]  # fmt: skip
    hf_s, hf_peak = hf_seconds(check, batches, checkpointing)
    free_memory(device)
    neo = random_neo(cfg, dtype=dtype, device=device).train()
    neo.language_model.model.gradient_checkpointing = checkpointing

    def neo_step(p: Pack) -> None:
        neo.zero_grad(set_to_none=True)
        out = neo(**p.columns, cu_seqlens=p.cu_seqlens, pixel_values=p.images, labels=p.labels)
        out.loss.backward()

    neo_s = time_per_call(
        lambda: one_pass([lambda p=p: neo_step(p) for p in check.packs]), 1, check.warmup, device
    )
    neo_peak = check.peak_gib()
    return {
        "real_tokens": real,
        "padded_tokens": sum(int(b[0].numel()) for b in batches),
        "hf_batches": len(batches),
        "hf_tokens_per_s": real / hf_s,
        "neo_tokens_per_s": real / neo_s,
        "ratio": hf_s / neo_s,
        "goal_ratio": 3.0,
        "hf_peak_gib": hf_peak,
        "neo_peak_gib": neo_peak,
    }


def hf_seconds(check: Check, batches: list, checkpointing: bool) -> tuple[float, float | None]:
    """Seconds of one pass of HF Qwen3 forward + backward over the padded batches; peak GiB."""
    model = hf_model(check.cfg, check.device, check.dtype, checkpointing)

    def hf_step(b) -> None:
        model.zero_grad(set_to_none=True)
        hf_loss(model, *b).backward()

    free_memory(check.device)
    steps = [lambda b=b: hf_step(b) for b in batches]
    seconds = time_per_call(lambda: one_pass(steps), 1, check.warmup, check.device)
    return seconds, check.peak_gib()


def generation(check: Check) -> dict:
    """Greedy tokens/s of ``generate`` at batch 1 and 8 on image prompts (random weights)."""
    device, cfg = check.device, check.cfg
    model = random_neo(cfg, dtype=check.dtype, device=device)
    new = 4 if check.dry else check.args.new_tokens
    g = 4 if check.dry else 16
    rng = np.random.default_rng(1)
    result = {"new_tokens": new}
    for batch in (1, 8):
        prompts = []
        for i in range(batch):
            turns = [("user", user_content(QUESTIONS[i % len(QUESTIONS)], 1))]
            image = random_image(rng, g, g + i % 3, cfg.image_factor)
            rendered = render_turns(check.tok, turns, [(g, g + i % 3)], add_generation_prompt=True)
            prompts.append(Prompt(rendered.input_ids, [image]))
        params = SamplingParams(max_new_tokens=new, stop_id=-1)
        free_memory(device)
        for _ in range(1 if check.dry else 2):  # the second run is timed (compilation first)
            sync(device)
            t0 = time.perf_counter()
            steps = generate_steps(model, prompts, params)
            next(steps)
            sync(device)
            prefill_s = time.perf_counter() - t0
            count = 1 + sum(1 for _ in steps)
            sync(device)
            total_s = time.perf_counter() - t0
        assert count == new, f"{count} steps, expected {new}"
        result[f"batch_{batch}"] = {
            "prompt_tokens": max(len(p.input_ids) for p in prompts),
            "prefill_s": prefill_s,
            "total_s": total_s,
            "tokens_per_s": batch * new / total_s,
            "decode_tokens_per_s": batch * (new - 1) / max(total_s - prefill_s, 1e-9),
            "peak_gib": check.peak_gib(),
        }
    return result


def cuda_test_files() -> list[str]:
    """Test files with a CUDA skip condition (``skipif(not torch.cuda.is_available())``)."""
    pattern = re.compile(r"skipif\(\s*not torch\.cuda\.is_available\(\)")
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if pattern.search(p.read_text())
    )


def cuda_tests(check: Check) -> dict:
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]
    if check.dry:
        cmd.append("--collect-only")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    lines = proc.stdout.strip().splitlines()
    return {"files": files, "collect_only": check.dry, "returncode": proc.returncode,
            "summary": lines[-1] if lines else "", "output_tail": (proc.stdout + proc.stderr)[-3000:]}  # fmt: skip


SECTIONS = {
    "train_mfu_eager": lambda c: train_mfu(c, compiled=False),
    "train_mfu_compiled": lambda c: train_mfu(c, compiled=True),
    "attention": attention,
    "vs_hf": vs_hf,
    "generation": generation,
    "cuda_tests": cuda_tests,
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_sections(check: Check, names: list[str]) -> dict:
    results = {}
    for name in names:
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            results[name] = {"ok": True, "result": SECTIONS[name](check)}
        except Exception as exc:  # noqa: BLE001 -- recorded; the other sections still run
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
            free_memory(check.device)
        results[name]["seconds"] = time.perf_counter() - t0
        results[name]["cpu_s"] = cpu_seconds() - c0
        print(f"[{name}] {'ok' if results[name]['ok'] else 'FAILED'} in "
              f"{results[name]['seconds']:.1f} s", flush=True)  # fmt: skip
    return results


def f(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict) -> str:
    s = report["sections"]
    lines = [f"gpu check on {report['device']} ({report['preset']}, {report['dtype']}, "
             f"torch {report['torch']}){' DRY RUN' if report['dry_run'] else ''}"]  # fmt: skip
    lines.append(f"{'section':<22}{'what':<44}{'value':>14}")
    for name, sec in s.items():
        if not sec["ok"]:
            lines.append(f"{name:<22}{'FAILED: ' + sec['error'][:60]}")
            continue
        r = sec["result"]
        rows = []
        if name.startswith("train_mfu"):
            rows = [(f"step s ({r['tokens']} tokens)", f(r["step_s"]))]
            rows += [(f"MFU {k}", f(v, ".1%")) for k, v in r["mfu"].items()]
            rows += [("tokens/s", f(r["tokens_per_s"], ",.0f")), ("peak GiB", f(r["peak_gib"]))]
        elif name == "attention":
            bw = "fwd+bwd" if r["backward"] else "fwd only (CPU)"
            rows = [(f"document-causal s, {bw}", f(r["document_causal"]["seconds"])),
                    (f"NEO mask s, {bw}", f(r["neo"]["seconds"])),
                    ("NEO / document time", f(r["time_ratio_neo_vs_document"])),
                    ("NEO / document pairs/s", f(r["throughput_ratio_neo_vs_document"])),
                    ("NEO mask build s", f(r["neo"]["mask_build_s"]))]  # fmt: skip
        elif name == "vs_hf":
            rows = [("HF Qwen3 padded+SDPA real tok/s", f(r["hf_tokens_per_s"], ",.0f")),
                    ("NEO packed real tok/s", f(r["neo_tokens_per_s"], ",.0f")),
                    ("NEO / HF (goal 3x)", f(r["ratio"], ".2f"))]  # fmt: skip
        elif name == "generation":
            for b in (1, 8):
                g = r[f"batch_{b}"]
                rows += [(f"batch {b} tokens/s", f(g["tokens_per_s"], ",.1f")),
                         (f"batch {b} prefill s", f(g["prefill_s"])),
                         (f"batch {b} peak GiB", f(g["peak_gib"]))]  # fmt: skip
        elif name == "cuda_tests":
            rows = [(("collected" if r["collect_only"] else "ran") + f", exit {r['returncode']}: "
                     + r["summary"], "")]  # fmt: skip
        for i, (what, value) in enumerate(rows):
            lines.append(f"{name if i == 0 else '':<22}{what:<44}{value:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, debug preset, seconds")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="2.2b")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--packs", type=int, default=2, help="rows for vs_hf (the first: the rest)")
    ap.add_argument("--grid", type=int, default=32, help="image side in tokens")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense, H100/H200")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run these sections")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run on the GPU machine, or pass --dry-run")
    t0 = time.perf_counter()
    check = Check(args)
    report = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if check.device.type == "cuda" else "CPU",
        "host": platform.node(),
        "torch": torch.__version__,
        "preset": check.preset,
        "dtype": str(check.dtype).removeprefix("torch."),
        "seq_len": check.seq_len,
        "sections": run_sections(check, args.only or list(SECTIONS)),
    }
    report["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"total {report['total_s']:.0f} s; JSON: {out / 'gpu_check.json'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if all(s["ok"] for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
