"""Recaption throughput: images per second per GPU for the ``transformers`` and ``neo`` backends
over a batch-size sweep, at a 2B-class captioner shape with random weights.

    .venv/bin/python benchmarks/bench_recaption.py                  # CUDA, bf16, 2B-class shapes
    .venv/bin/python benchmarks/bench_recaption.py --device cpu --tiny   # smoke run, < 60 s

What runs is the backends themselves (``neo_data.recaption.captioners.TransformersCaptioner`` and
``NeoCaptioner``, loaded from checkpoints saved here): decoding the JPEG bytes, the processor /
NEO prompt building, batched generation, detokenisation -- everything an actor does per batch
except Ray's data movement. Weights are random, so the number of generated tokens per image is
whatever the model emits before its stop token or ``--new-tokens``; it is printed next to the
rate (tokens/img) because images/s depends on it.

Shapes (``--tiny`` swaps in toy shapes so the same code runs on a CPU):

* ``transformers``: a LLaVA-architecture model (``LlavaForConditionalGeneration``): CLIP
  ViT-L/14 at 336 px (577 image tokens) + a Qwen3-1.7B-shaped language model: about 2.0 B
  parameters. A Qwen2-VL/Qwen2.5-VL processor needs torchvision's video processor, which the
  target machines lack; LLaVA builds from configs alone.
* ``neo``: the NEO-2.2B preset (``neo_model.config.neo_2_2b``); images of ``--image-size``
  pixels square (448: 14 x 14 = 196 image tokens).

Ratios are against batch size 1 of the same backend, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neo_data.encoding.images import MAX_DECODE_PIXELS
from neo_data.manifest.recaption import GenerationSpec
from neo_data.recaption.captioners import Captioner, TransformersCaptioner
from neo_model.captioner import NeoCaptioner
from neo_model.testing import save_random_llava, save_random_neo


def jpeg_images(n: int, side: int, seed: int = 0) -> list[bytes]:
    """Distinct smooth-noise JPEGs (real encoded bytes, as curated rows hold them)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def measure(captioner: Captioner, images: list[bytes], batch: int, sync) -> tuple[float, float]:
    """Seconds to caption ``images`` in batches of ``batch``, and mean new tokens per image."""
    captioner.caption([[b] for b in images[:batch]])  # warm-up (allocations, kernels)
    sync()
    t0 = time.perf_counter()
    texts = []
    for i in range(0, len(images), batch):
        texts += captioner.caption([[b] for b in images[i : i + batch]])
    sync()
    seconds = time.perf_counter() - t0
    failed = [c for c in texts if c.text is None and c.reason != "empty_generation"]
    if failed:
        raise RuntimeError(f"captioning failed in the benchmark: {failed[0]}")
    tokenizer = getattr(captioner, "tok", None)
    counts = [
        len(tokenizer.encode(c.text))
        if tokenizer
        else len(captioner.processor.tokenizer(c.text)["input_ids"])
        for c in texts
        if c.text
    ]
    return seconds, float(np.mean(counts)) if counts else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke run)")
    ap.add_argument("--backends", default="transformers,neo")
    ap.add_argument("--batch-sizes", default=None, help="default 1,4,16,32,64 (tiny: 1,2,4)")
    ap.add_argument("--batches", type=int, help="timed batches per batch size (3; tiny: 2)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=448)
    args = ap.parse_args(argv)
    shape = "tiny" if args.tiny else "2b"
    batches = args.batches or (2 if args.tiny else 3)
    sizes = [
        int(s) for s in (args.batch_sizes or ("1,2,4" if args.tiny else "1,4,16,32,64")).split(",")
    ]
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    generation = GenerationSpec(max_new_tokens=args.new_tokens if not args.tiny else 8)
    prompt = "Describe this image in detail."
    images = jpeg_images(max(sizes) * batches, 64 if args.tiny else args.image_size)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            if backend == "transformers":
                path = save_random_llava(Path(tmp) / "llava", shape, dtype)
                captioner = TransformersCaptioner(
                    str(path), prompt, generation, MAX_DECODE_PIXELS, device=args.device
                )
            elif backend == "neo":
                path = save_random_neo(Path(tmp) / "neo", shape, dtype)
                captioner = NeoCaptioner(
                    str(path), prompt, generation, MAX_DECODE_PIXELS, device=args.device
                )
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            params = sum(p.numel() for p in captioner.model.parameters()) / 1e9
            print(f"# {backend}: {params:.2f} B parameters, loaded in {time.perf_counter() - t0:.1f} s",
                  flush=True)  # fmt: skip
            base = None
            for batch in sizes:
                n = batch * batches
                seconds, tokens = measure(captioner, images[:n], batch, sync)
                rate = n / seconds
                base = base or rate
                rows.append((backend, batch, n, seconds, rate, tokens, rate / base))
            del captioner
            if cuda:
                torch.cuda.empty_cache()

    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"\nrecaption throughput on {device} ({shape} shapes, {dtype}, "
          f"max {generation.max_new_tokens} new tokens, 1 device)")  # fmt: skip
    print(f"{'backend':<13}{'batch':>6}{'images':>8}{'seconds':>9}{'images/s':>10}"
          f"{'tokens/img':>11}{'x batch 1':>10}")  # fmt: skip
    for backend, batch, n, seconds, rate, tokens, ratio in rows:
        print(
            f"{backend:<13}{batch:>6}{n:>8}{seconds:>9.2f}{rate:>10.2f}{tokens:>11.1f}{ratio:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
