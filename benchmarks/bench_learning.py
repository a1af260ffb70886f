"""Does a debug NEO learn? Three stages on synthetic shapes, evaluated on held-out images.

    python benchmarks/bench_learning.py [--out runs/bench-learning] [--steps 300 600 300]

What runs, all on this CPU and through the product's own code paths:

0. **The language model** (what a Qwen3 checkpoint is to the paper): a debug-size HF
   ``Qwen3ForCausalLM`` (2 layers, hidden 64, the real 151,936-token vocabulary) trained with
   plain PyTorch (``neo_model.testing.train_tiny_lm``) on the *text* of the training
   conversations, images removed. It knows the grammar and the word distribution of captions
   and answers, but it has never seen a pixel.
1. **Pre-training** (``neo_model.train.loop``, stage ``pretrain``): NEO built from that checkpoint
   by the doc's rules (``train.init.kind: qwen3``, 2 pre-Buffer layers); only the patch
   embedding, the pre-Buffer and the post-LLM H/W q/k parts train; caption samples.
2. **Mid-training** (``midtrain``): everything trains; captions and conversations.
3. **SFT** (``sft``): everything trains; conversations (describe + question/answer turns).

The data is ``neo_data.synthetic.learning``: the demo's scene generator (shapes, colours,
positions, counts) with ``--groups`` groups per scene at most (1 by default: "Three red stars in
the top left corner, on a white background.") and no word scenes; images are rendered at
``--image-size`` px and packed by the pack job (``neo_data.pack.job.run_pack``, local Ray) into
``--seq-len``-token packs. The held-out scenes are scenes whose caption no training sample has
(``neo_data.synthetic.evaluate.unseen_scenes``).

Measured after each stage, on the held-out images:

* **held-out loss**: the mean cross-entropy of the caption tokens given the image, with the
  trainer's own forward (``neo_model.evaluation.packed_loss`` on packs of the held-out set) --
  and the same with each caption paired with *another* held-out image (**shuffled**): the gap
  is what the image is worth. Before stage 1 this is the untrained NEO; the language model's
  own loss on the caption text alone is the text-only baseline.
* **exact match**: greedy ``generate()`` from ``<image>\\nDescribe the image.`` against the
  scene's caption (``neo_model.evaluation.answer_questions``); per-attribute accuracy (count,
  colour, shape, position, background: ``neo_data.synthetic.evaluate.score``) for one-group
  scenes; and one question per image (``qa_for``) answered exactly. The ``other`` columns
  score the same answers against a *different* held-out scene's truth (what a model that
  ignores the image would reach).

Defaults take about 30 minutes on 2 cores (96 px images: 3 x 3 tokens, one per grid cell of the
generator); in that budget the debug model learns background and object colour. With
``--steps 300 1500 300`` (about 50 minutes) it also counts (83%) and starts on position; shapes,
a few pixels wide at 96 px, stay the hardest.

Training loss curves come from each stage's ``metrics.jsonl``. Every figure is printed as tables;
``--out`` keeps the data, manifests, checkpoints and a ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from neo_data.encoding.tokens import load_tokenizer
from neo_data.synthetic import learning
from neo_data.synthetic.evaluate import ATTRS, score
from neo_data.synthetic.rows import write_curated
from neo_data.synthetic.texts import DESCRIBE_QUESTION as DESCRIBE
from neo_data.synthetic.texts import caption_for
from neo_model.evaluation import answer_questions, chat_loss, packed_loss
from neo_model.testing import train_tiny_lm

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "midtrain", "sft")


# ---------------------------------------------------------------------------------------------
# Stage 0: the language model
# ---------------------------------------------------------------------------------------------


def train_lm(
    out: Path, texts: list[tuple[list[int], list[int]]], steps: int, lr: float, seed: int
) -> list[dict]:
    """Train the language model, save it to ``out``; its loss curve."""

    def progress(step: int, loss: float) -> None:
        print(f"[bench] language model step {step}: loss {loss:.3f}", flush=True)

    model, curve = train_tiny_lm(texts, steps, lr, seed, on_progress=progress)
    model.save_pretrained(out)
    return curve


def lm_caption_loss(path: Path, tok, held) -> float:
    """The language model's loss per supervised token on the held-out captions, given only the
    text of the question (the packer's label rule: the answer and its ``<|im_end|>\\n``)."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(path).eval()
    return chat_loss(
        model, tok, [[("user", DESCRIBE), ("assistant", caption_for(s))] for s in held]
    )


# ---------------------------------------------------------------------------------------------
# Stages 1-3: the trainer
# ---------------------------------------------------------------------------------------------


def pack_section(args) -> dict[str, Any]:
    pixels = args.image_size * args.image_size
    return {
        "seq_len": args.seq_len,
        "min_pixels": pixels,
        "max_pixels": pixels,
        "buckets": [{"name": "all", "max_image_tokens": pixels // 1024}],
        "caption_prompt": DESCRIBE,
        "image_encoding": {"format": "png"},
        "packs_per_shard": 64,
        "seed": args.seed,
    }


def write_manifest(path: Path, body: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def pack(manifest_path: Path) -> dict:
    from neo_data.manifest import load_manifest
    from neo_data.pack.job import run_pack

    return run_pack(load_manifest(str(manifest_path))).index


def train(manifest_path: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "pipelines.train_worker", "--manifest", str(manifest_path)]
        run = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if run.returncode != 0:
        raise SystemExit(f"training failed ({manifest_path}); see {log}:\n"
                         + log.read_text()[-3000:])  # fmt: skip
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(export: str, tok, held, images, qas, eval_urls, pixels) -> dict[str, Any]:
    from neo_model.weights import load_for_inference

    model, _ = load_for_inference(export, "cpu")
    res: dict[str, Any] = {
        "loss": packed_loss(model, eval_urls["matched"]),
        "loss_shuffled": packed_loss(model, eval_urls["shuffled"]),
    }

    def answer(questions: list[str]) -> list[str]:
        return answer_questions(
            model, tok, images, questions, pixels, pixels, max_new_tokens=32, batch_size=16
        )

    captions = answer([DESCRIBE] * len(images))
    truths = [caption_for(s) for s in held]
    res["describe"] = score(captions, truths, held)
    # baseline: the same answers scored against the next scene's truth (ignoring the image)
    rolled = held[1:] + held[:1]
    res["describe_other"] = score(captions, [caption_for(s) for s in rolled], rolled)
    replies = answer([q for q, _ in qas])
    res["qa"] = float(np.mean([r == a for r, (_, a) in zip(replies, qas, strict=True)]))
    rolled_qas = qas[1:] + qas[:1]
    res["qa_other"] = float(
        np.mean([r == a for r, (_, a) in zip(replies, rolled_qas, strict=True)])
    )
    res["examples"] = [
        {"truth": t, "caption": c, "question": q, "answer": a, "reply": r}
        for t, c, (q, a), r in list(zip(truths, captions, qas, replies, strict=True))[:6]
    ]
    return res


def untrained_export(lm_dir: Path, out: Path, pre_buffer: int) -> str:
    """NEO initialised from the language model, before any NEO training (the step-0 row)."""
    from neo_model.weights import from_qwen3, save_pretrained

    model = from_qwen3(str(lm_dir), num_extra_layers=pre_buffer)
    save_pretrained(model, out)
    return str(out)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def progress(name: str, e: dict[str, Any], seconds: float) -> None:
    d = e["describe"]
    print(
        f"[bench] {name}: {seconds:.0f} s; held-out loss {e['loss']:.3f} (shuffled images "
        f"{e['loss_shuffled']:.3f}); exact {d['exact']:.1%}, "
        + ", ".join(f"{a} {d[a]:.0%}" for a in ATTRS)
        + f"; QA {e['qa']:.1%}",
        flush=True,
    )


def curve_points(metrics: list[dict], n: int = 6) -> str:
    if not metrics:
        return "-"
    idx = sorted({round(i * (len(metrics) - 1) / (n - 1)) for i in range(n)})
    return "  ".join(f"{metrics[i]['step']}:{metrics[i]['loss']:.2f}" for i in idx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-learning")
    ap.add_argument("--captions", type=int, default=6000, help="training caption samples")
    ap.add_argument("--conversations", type=int, default=3000, help="training conversations")
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--groups", type=int, default=1, help="shape groups per scene, at most")
    ap.add_argument("--turns", type=int, default=3, help="question/answer pairs per conversation")
    ap.add_argument(
        "--image-size", type=int, default=96, help="px (96: 3x3 tokens, a token a cell)"
    )
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lm-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, nargs=3, default=[300, 600, 300], metavar="N")
    ap.add_argument("--lr", type=float, nargs=3, default=[3e-3, 2e-3, 1e-3], metavar="LR")
    ap.add_argument("--lm-lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="reuse data and stages already in --out")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="train the paper's four Table 3 variants (rope native | 1d x attention mixed | "
        "causal) on the same data, seeds and steps; print their held-out tables side by side",
    )
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_ACCEPT_CLUSTER_RESOURCES_OVERRIDE", "1")
    tok = load_tokenizer("builtin:qwen3")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # data --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    train_scenes = learning.shape_scenes(
        args.seed, "train", args.captions + args.conversations, args.groups
    )
    cap_scenes, chat_scenes = train_scenes[: args.captions], train_scenes[args.captions :]
    held = learning.held_out_shape_scenes(train_scenes, args.seed, args.held_out, args.groups)
    data, size = out / "data", args.image_size
    files = {
        "captions": write_curated(str(data / "captions.parquet"),
                                  learning.caption_rows(cap_scenes, size, "bench-captions")),
        "conversations": write_curated(
            str(data / "conversations.parquet"),
            learning.conversation_rows(chat_scenes, size, args.seed, args.turns)),
        "held_out": write_curated(str(data / "held_out.parquet"),
                                  learning.caption_rows(held, size, "bench-held-out")),
        "held_out_shuffled": write_curated(
            str(data / "held_out_shuffled.parquet"),
            learning.caption_rows(held, size, "bench-held-out-shuffled", held[1:] + held[:1])),
    }  # fmt: skip
    images = learning.eval_images(held, size)
    qas = learning.eval_questions(held)
    timings["data"] = time.perf_counter() - t0

    from neo_data.ray_env import init_ray

    init_ray(log_file=out / "logs" / "ray.log")  # Ray's own logging: not on the console
    t0 = time.perf_counter()
    pack_cfg = pack_section(args)
    stage_data = {
        "pretrain": [files["captions"]],
        "midtrain": [files["captions"], files["conversations"]],
        "sft": [files["conversations"]],
    }
    eval_urls = {}
    for name, key in (("matched", "held_out"), ("shuffled", "held_out_shuffled")):
        m = write_manifest(out / "manifests" / f"eval-{name}.yaml", {
            "name": f"bench-eval-{name}", "stage": "pretrain",
            "data": {"curated": [files[key]], "packed": str(out / "packed" / f"eval-{name}")},
            "pack": pack_cfg,
        })  # fmt: skip
        pack(m)
        eval_urls[name] = str(out / "packed" / f"eval-{name}")
    packed = {}
    for stage in STAGES:
        m = write_manifest(out / "manifests" / f"pack-{stage}.yaml", {
            "name": f"bench-{stage}", "stage": stage,
            "data": {"curated": stage_data[stage], "packed": str(out / "packed" / stage)},
            "pack": pack_cfg,
        })  # fmt: skip
        packed[stage] = pack(m)
    timings["pack"] = time.perf_counter() - t0

    # stage 0: the language model -----------------------------------------------------------
    t0 = time.perf_counter()
    lm_dir = out / "models" / "qwen3-lm"
    lm_curve = train_lm(
        lm_dir, learning.lm_texts(tok, train_scenes, args.seed, args.turns), args.lm_steps,
        args.lm_lr, args.seed,
    )  # fmt: skip
    lm_loss = lm_caption_loss(lm_dir, tok, held)
    print(f"[bench] language model: {args.lm_steps} steps, {time.perf_counter() - t0:.0f} s, held-out "
          f"caption loss from text alone {lm_loss:.3f}", flush=True)  # fmt: skip
    timings["lm"] = time.perf_counter() - t0

    pixels = args.image_size * args.image_size
    if args.ablation:
        return ablation(args, out, lm_dir, stage_data, pack_cfg, tok, held, images, qas,
                        eval_urls, pixels)  # fmt: skip
    results: dict[str, Any] = {"args": vars(args), "lm_curve": lm_curve, "lm_caption_loss": lm_loss}
    results["init"] = evaluate(
        untrained_export(lm_dir, out / "models" / "neo-init", 2), tok, held, images, qas,
        eval_urls, pixels,
    )  # fmt: skip
    progress("init", results["init"], 0.0)

    def on_stage(stage: str, export: str, seconds: float) -> None:
        results[stage] = evaluate(export, tok, held, images, qas, eval_urls, pixels)
        progress(stage, results[stage], seconds)

    _, stage_times, curves = train_stages(
        args, out, out / "packed", lm_dir, stage_data, pack_cfg, on_stage=on_stage
    )
    timings.update(stage_times)
    timings["total"] = time.perf_counter() - t_all
    results["curves"], results["timings"] = curves, timings
    results["packed"] = {s: packed[s]["totals"] for s in STAGES}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report(results, args, len(held))
    return 0


VARIANTS = (("native", "mixed"), ("1d", "mixed"), ("native", "causal"), ("1d", "causal"))


def train_stages(
    args,
    out: Path,
    packed: Path,
    lm_dir: Path,
    stage_data,
    pack_cfg,
    variant: tuple[str, str] | None = None,
    on_stage=None,
) -> tuple[str, dict[str, float], dict[str, list[dict]]]:
    """The three stages from the language model, on the packs under ``packed``, runs under
    ``out`` (with ``variant``, each stage's manifest names its ``train.rope`` /
    ``train.attention``); ``on_stage(stage, export, seconds)`` after each. Returns the last
    export and each stage's time and loss curve."""  # fmt: skip
    previous = {"kind": "qwen3", "path": str(lm_dir), "pre_buffer_layers": 2}
    timings, curves, export = {}, {}, ""
    switches = {"rope": variant[0], "attention": variant[1]} if variant else {}
    for stage, steps, lr in zip(STAGES, args.steps, args.lr, strict=True):
        run_dir = out / "train" / stage
        if run_dir.exists():
            shutil.rmtree(run_dir)
        m = write_manifest(out / "manifests" / f"train-{stage}.yaml", {
            "name": f"bench-{stage}", "stage": stage,
            "data": {"curated": stage_data[stage], "packed": str(packed / stage)},
            "pack": pack_cfg,
            "train": {
                "init": previous, "output": str(run_dir), "steps": steps, "lr": lr,
                "warmup": 0.05, "num_workers": 1, "log_every": 10,
                "checkpoint_every": steps, "seed": args.seed, **switches,
            },
        })  # fmt: skip
        timings[stage] = train(m, out / f"train-{stage}.log")
        curves[stage] = [
            json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        export = str(run_dir / "export")
        if on_stage is not None:
            on_stage(stage, export, timings[stage])
        previous = {"kind": "neo", "path": export}
    return export, timings, curves


def ablation(args, out, lm_dir, stage_data, pack_cfg, tok, held, images, qas, eval_urls, pixels):
    """Train and evaluate each variant of :data:`VARIANTS` after all three stages."""
    from neo_model.weights import from_pretrained

    results: dict[str, Any] = {"args": vars(args), "variants": {}}
    for rope, attention in VARIANTS:
        name = f"{rope}+{attention}"
        export, timings, curves = train_stages(
            args,
            out / "ablation" / name,
            out / "packed",
            lm_dir,
            stage_data,
            pack_cfg,
            (rope, attention),
        )
        config = from_pretrained(export).config
        assert (config.rope, config.attention) == (rope, attention), (name, config)
        e = evaluate(export, tok, held, images, qas, eval_urls, pixels)
        progress(name, e, sum(timings.values()))
        results["variants"][name] = {**e, "timings": timings, "curves": curves}
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    names = list(results["variants"])
    print(f"\nablation: {len(held)} held-out scenes, steps {args.steps}, "
          f"{args.image_size}px, seed {args.seed} (Table 3 of the paper: rope x attention)")  # fmt: skip
    print(f"{'':<22}" + "".join(f"{n:>16}" for n in names))
    rows = [("held-out loss", "loss", None), ("loss, other image", "loss_shuffled", None)]
    rows += [(a, "describe", a) for a in (*ATTRS, "exact")]
    for label, key, attr in rows:
        cells = []
        for n in names:
            e = results["variants"][n]
            if attr is None:
                cells.append(f"{e[key]:>16.3f}")
            else:
                cells.append(f"{e['describe'][attr]:>9.1%} ({e['describe_other'][attr]:>4.0%})")
        print(f"{label:<22}" + "".join(cells))
    print(f"{'QA exact':<22}" + "".join(f"{results['variants'][n]['qa']:>16.1%}" for n in names))
    print(f"{'train time s':<22}" + "".join(
        f"{sum(results['variants'][n]['timings'].values()):>16.0f}" for n in names))  # fmt: skip
    print("  attribute cells: held-out accuracy (the same answers against another image)")
    return 0


def report(r: dict[str, Any], args, n_held: int) -> None:
    t = r["timings"]
    print(
        f"\ndebug NEO (2 pre-Buffer + 2 post-LLM layers, hidden 64) on this CPU "
        f"({os.cpu_count()} cores, torch {torch.__version__}); {args.captions} captions + "
        f"{args.conversations} conversations, <= {args.groups} group(s) per scene, "
        f"{args.image_size}px images, {args.seq_len}-token packs; {n_held} held-out scenes"
    )
    print(
        f"language model: {args.lm_steps} steps in {t['lm']:.0f} s, last train loss "
        f"{r['lm_curve'][-1]['loss']:.3f}; held-out caption loss from text alone "
        f"{r['lm_caption_loss']:.3f}\n"
    )
    head = (
        f"{'after':<10}{'steps':>6}{'time s':>8}{'loss':>8}{'shuffled':>10}{'exact':>8}"
        f"{'other':>7}" + "".join(f"{a[:6]:>8}" for a in ATTRS) + f"{'QA':>7}{'other':>7}"
    )
    print(head)
    rows = [("init", 0, 0.0)] + [(s, n, t[s]) for s, n in zip(STAGES, args.steps, strict=True)]
    for name, steps, secs in rows:
        e = r[name]
        d, o = e["describe"], e["describe_other"]
        print(f"{name:<10}{steps:>6}{secs:>8.0f}{e['loss']:>8.3f}{e['loss_shuffled']:>10.3f}"
              f"{d['exact']:>8.1%}{o['exact']:>7.1%}"
              + "".join(f"{d[a]:>8.1%}" for a in ATTRS)
              + f"{e['qa']:>7.1%}{e['qa_other']:>7.1%}")  # fmt: skip
    print(
        "  loss / shuffled: held-out caption cross-entropy per token with the image / with "
        "another held-out image;\n  exact: greedy 'Describe the image.' == caption; other: the "
        "same captions scored against another scene;\n  count..background: attributes read "
        "from the caption; QA: one question per image, exact answer.\n"
    )
    print("training loss (step:loss, from metrics.jsonl):")
    for s in STAGES:
        print(f"  {s:<9} {curve_points(r['curves'][s])}")
    print(f"  {'lm':<9} {curve_points(r['lm_curve'])}")
    print(
        f"\ntime: data {t['data']:.0f} s, pack {t['pack']:.0f} s, language model {t['lm']:.0f} s, "
        + ", ".join(f"{s} {t[s]:.0f} s" for s in STAGES)
        + f"; total {t['total'] / 60:.1f} min"
    )
    print("\nexamples after SFT:")
    for ex in r["sft"]["examples"][:4]:
        print(
            f"  truth   {ex['truth']}\n  caption {ex['caption']}\n"
            f"  Q {ex['question']}  A {ex['reply']}  (truth: {ex['answer']})"
        )


if __name__ == "__main__":
    sys.exit(main())
