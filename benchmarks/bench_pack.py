"""Pack benchmarks: throughput against bare Pillow, draft decoding, fill, image encodings.

    .venv/bin/python benchmarks/bench_pack.py [--images 1000] [--large 32] [--workers 2]

Prints four tables. Ratios are against baselines measured in the same run on the same cores:
``--images`` photo-like JPEGs of 256..2048 px a side (the pretrain budget keeps them near their
size) through bare Pillow, the per-sample encoder and the whole pack job on Ray; ``--large``
camera-size JPEGs (3000..6000 px) through bare Pillow and the encoder, whose draft decoding
(DCT-domain downscale) changes pixels: its PSNR against the full decode is printed.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np
from PIL import Image

from neo_data.encoding.encode import EncodeSettings, SampleEncoder
from neo_data.encoding.images import (
    MAX_DECODE_PIXELS,
    ImageEncoding,
    encode_image,
    prepare_image,
    smart_resize,
)
from neo_data.encoding.tokens import load_tokenizer
from neo_data.pack.packing import choose_groups
from neo_data.synthetic.lengths import realistic_mix
from neo_data.synthetic.rows import ORIGINAL_PROVENANCE, curated_row, image_entry, write_curated

MIN_PIXELS, MAX_PIXELS = 256 * 256, 2048 * 2048


def photo_like(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A JPEG with photo-like statistics (smooth gradients, texture, edges) at quality 90."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            127 + 60 * np.sin(xx / rng.uniform(20, 90) + c) * np.cos(yy / rng.uniform(20, 90) - c)
            for c in range(3)
        ],
        -1,
    )
    noise = rng.normal(0, 12, (h, w, 3))
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_images(n: int, seed: int = 0, sides: tuple[int, int] = (256, 2048)) -> list[bytes]:
    rng = np.random.default_rng(seed)
    lo, hi = sides
    return [
        photo_like(rng, int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        for _ in range(n)
    ]


def bare_pillow(data: bytes) -> int:
    """The baseline: decode, convert to RGB, bicubic resize to the NEO target."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    h, w = smart_resize(img.height, img.width, MIN_PIXELS, MAX_PIXELS)
    return img.resize((w, h), Image.Resampling.BICUBIC).width


_ENCODERS: dict[str, SampleEncoder] = {}


def _encoder(subsampling: str) -> SampleEncoder:
    if subsampling not in _ENCODERS:
        enc = ImageEncoding("jpeg", 95, subsampling)
        settings = EncodeSettings(16384, 16384, MIN_PIXELS, MAX_PIXELS, MAX_DECODE_PIXELS, enc)
        _ENCODERS[subsampling] = SampleEncoder(load_tokenizer(), settings)
    return _ENCODERS[subsampling]


def neo_encode(row: dict) -> int:
    """Everything the packer does per sample: decode, resize, encode, tokenize, T/H/W."""
    return _encoder("4:4:4")(row).num_tokens


def neo_encode_420(row: dict) -> int:
    return _encoder("4:2:0")(row).num_tokens


def timed_pool(fn, items, workers: int) -> float:
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(fn, items[:workers], chunksize=1)  # warm up (tokenizer load, imports)
        t0 = time.perf_counter()
        pool.map(fn, items, chunksize=4)
        return time.perf_counter() - t0


def bench_throughput(images: list[bytes], workers: int) -> list[tuple[str, float, float]]:
    caption = {
        "text": "A photo of a scene with some objects. " * 3,
        "provenance": ORIGINAL_PROVENANCE,
    }
    rows = [
        curated_row("caption", f"bench-{i:06d}", "bench", i, images=[image_entry(b)],
                    captions=[caption])
        for i, b in enumerate(images)
    ]  # fmt: skip
    base = timed_pool(bare_pillow, images, workers)
    enc = timed_pool(neo_encode, rows, workers)
    enc420 = timed_pool(neo_encode_420, rows, workers)
    out = [
        ("bare Pillow decode+resize", len(images) / base, 1.0),
        ("neo encode per sample, jpeg 4:4:4", len(images) / enc, base / enc),
        ("neo encode per sample, jpeg 4:2:0", len(images) / enc420, base / enc420),
    ]
    # The whole Ray pack job (encode, plan, shuffle, write shards, index) on the same images.
    import ray

    from neo_data.manifest import parse_manifest
    from neo_data.pack.job import run_pack
    from neo_data.ray_env import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(0, len(rows), 32):
            write_curated(f"{tmp}/in-{k:05d}.parquet", rows[k : k + 32], row_group_size=16)
        # A real dataset has many windows; give each worker several here too.
        window = max(32, len(rows) // (4 * workers))
        manifest = parse_manifest(
            f"name: bench\ndata: {{curated: [{tmp}], packed: {tmp}/packed}}\n"
            f"pack: {{text_ratio: 0.0, window_samples: {window}}}\n",
            "bench",
        )
        init_ray(num_cpus=workers)
        t0 = time.perf_counter()
        run_pack(manifest, concurrency=workers)
        job = time.perf_counter() - t0
        ray.shutdown()
    out.append(("neo pack job on Ray (end to end)", len(images) / job, base / job))
    return out


def bench_draft(images: list[bytes], workers: int) -> tuple[list[tuple[str, float, float]], float]:
    """Large JPEGs: bare Pillow (full decode + resize) against the encoder (draft decode +
    resize + encode); and the PSNR of draft + resize against full decode + resize."""
    base = timed_pool(bare_pillow, images, workers)
    enc = timed_pool(neo_prepare, images, workers)
    psnrs = []
    for data in images[:16]:
        full = Image.open(io.BytesIO(data)).convert("RGB")
        h, w = smart_resize(full.height, full.width, MIN_PIXELS, MAX_PIXELS)
        ref = np.asarray(full.resize((w, h), Image.Resampling.BICUBIC), np.float64)
        out = prepare_image(data, MIN_PIXELS, MAX_PIXELS, ImageEncoding("png"))
        got = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), np.float64)
        mse = ((got - ref) ** 2).mean()
        psnrs.append(99.0 if mse == 0 else 10 * np.log10(255**2 / mse))
    rows = [
        ("bare Pillow decode+resize", len(images) / base, 1.0),
        ("neo prepare_image (draft), jpeg 4:4:4", len(images) / enc, base / enc),
    ]
    return rows, float(min(psnrs))


def neo_prepare(data: bytes) -> int:
    return prepare_image(data, MIN_PIXELS, MAX_PIXELS, ImageEncoding()).width


def bench_fill() -> list[tuple[str, int, int, float, float]]:
    rows = []
    for n in (20_000, 200_000):
        tok, img = realistic_mix(n, seed=0)
        for seq_len, img_budget in ((16_384, 16_384), (16_384, 12_288), (32_768, 32_768)):
            t0 = time.perf_counter()
            groups = choose_groups(tok, img, seq_len, img_budget, seed=0)
            dt = time.perf_counter() - t0
            fill = tok.sum() / (len(groups) * seq_len)
            rows.append(
                (f"{n:,} samples, {seq_len:,} tok / {img_budget:,} img", len(groups), n, fill, dt)
            )
    return rows


def bench_job_fill(n: int = 80_000) -> tuple[int, int, int, float]:
    """Fill of the pack job's own plan (windows, default buckets, text ratio 0.3) on the mix."""
    import pyarrow as pa

    from neo_data.manifest import parse_manifest
    from neo_data.pack.plan import LENGTH_SCHEMA, bucket_of, plan_window, text_quota

    pack = parse_manifest("name: b\ndata: {curated: [x], packed: y}\n", "bench").resolved_pack()
    bounds = [(b.name, b.max_image_tokens) for b in pack.buckets]
    tok, img = realistic_mix(n, seed=0)
    ids = pa.table({"sample_id": [f"s{k}" for k in range(n)], "text_only": img == 0})
    threshold = text_quota(ids, pack.text_ratio, pack.seed).threshold  # over the whole mix
    packs = tokens = windows = 0
    for w, start in enumerate(range(0, n, pack.window_samples)):
        t, i = tok[start : start + pack.window_samples], img[start : start + pack.window_samples]
        lengths = pa.table(
            {
                "unit_id": ["u"] * len(t),
                "row": np.arange(len(t)),
                "sample_id": [f"s{start + k}" for k in range(len(t))],
                "source": ["bench"] * len(t),
                "text_only": i == 0,
                "bucket": [None if v == 0 else bucket_of(int(v), bounds) for v in i],
                "num_tokens": t,
                "num_image_tokens": i,
            },
            schema=LENGTH_SCHEMA,
        )
        plan = plan_window(lengths, pack, w, threshold)
        rows = [r for shard in plan.shards for p in shard.packs for _, r in p]
        packs += sum(len(shard.packs) for shard in plan.shards)
        tokens += int(t[rows].sum())
        windows += 1
    return n, windows, packs, tokens / (packs * pack.seq_len)


def bench_encodings(images: list[bytes]) -> list[tuple[str, float, float, float]]:
    resized = []
    for data in images[:24]:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        h, w = smart_resize(img.height, img.width, MIN_PIXELS, MAX_PIXELS)
        resized.append(img.resize((w, h), Image.Resampling.BICUBIC))
    raw = sum(im.width * im.height * 3 for im in resized)
    out = []
    for enc in (
        ImageEncoding("jpeg", 95),
        ImageEncoding("jpeg", 95, "4:2:0"),
        ImageEncoding("webp", 95),
        ImageEncoding("png"),
    ):
        size, psnrs, t_dec = 0, [], 0.0
        for im in resized:
            data = encode_image(im, enc)
            size += len(data)
            t0 = time.perf_counter()
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
            t_dec += time.perf_counter() - t0
            mse = ((back - np.asarray(im, dtype=np.float64)) ** 2).mean()
            psnrs.append(99.0 if mse == 0 else 10 * np.log10(255**2 / mse))
        out.append(
            (
                {"jpeg": f"jpeg q{enc.quality} {enc.subsampling}", "png": "png"}.get(
                    enc.format, f"{enc.format} q{enc.quality}"
                ),
                raw / size,
                float(np.mean(psnrs)),
                t_dec / len(resized) * 1e3,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--large", type=int, default=32, help="camera-size JPEGs (draft decoding)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    images = make_images(args.images)
    print(
        f"{args.images} photo-like JPEGs, sides 256..2048 px, smart resize {MIN_PIXELS}..{MAX_PIXELS} px, {args.workers} workers\n"
    )

    print(f"{'pack throughput':<40}{'images/s':>10}{'vs Pillow':>11}")
    for name, rate, ratio in bench_throughput(images, args.workers):
        print(f"{name:<40}{rate:>10.1f}{ratio:>11.2f}")

    large = make_images(args.large, seed=1, sides=(3000, 6000))
    rows, psnr = bench_draft(large, args.workers)
    print(f"\n{f'{args.large} JPEGs of 3000..6000 px':<40}{'images/s':>10}{'vs Pillow':>11}")
    for name, rate, ratio in rows:
        print(f"{name:<40}{rate:>10.1f}{ratio:>11.2f}")
    print(f"draft + resize vs full decode + resize: PSNR >= {psnr:.1f} dB (worst of 16)")

    print(f"\n{'fill (first-fit decreasing)':<44}{'packs':>8}{'fill':>9}{'seconds':>9}")
    for name, packs, _, fill, dt in bench_fill():
        print(f"{name:<44}{packs:>8,}{fill:>9.4f}{dt:>9.2f}")

    n, windows, packs, fill = bench_job_fill()
    print(
        f"{f'job plan: {n:,} samples, {windows} windows, 3 buckets, text 0.3':<44}{packs:>8,}{fill:>9.4f}"
    )

    print(f"\n{'stored image encoding':<24}{'raw/size':>9}{'PSNR dB':>9}{'decode ms':>11}")
    for name, ratio, psnr, ms in bench_encodings(images):
        print(f"{name:<24}{ratio:>9.1f}{psnr:>9.1f}{ms:>11.1f}")


if __name__ == "__main__":
    main()
