"""Does a debug NEO learn? Three stages on synthetic shapes, evaluated on held-out images.

    python benchmarks/bench_learning.py [--out runs/bench-learning] [--steps 300 600 300]

What runs, all on this CPU and through the product's own code paths:

0. **The language model** (what a Qwen3 checkpoint is to the paper): a debug-size HF
   ``Qwen3ForCausalLM`` (2 layers, hidden 64, the real 151,936-token vocabulary) trained with
   plain PyTorch on the *text* of the training conversations, images removed. It knows the
   grammar and the word distribution of captions and answers, but it has never seen a pixel.
1. **Pre-training** (``neo_model.train.loop``, stage ``pretrain``): NEO built from that checkpoint
   by the doc's rules (``train.init.kind: qwen3``, 2 pre-Buffer layers); only the patch
   embedding, the pre-Buffer and the post-LLM H/W q/k parts train; caption samples.
2. **Mid-training** (``midtrain``): everything trains; captions and conversations.
3. **SFT** (``sft``): everything trains; conversations (describe + question/answer turns).

The data is ``neo_data.synthetic.scenes``'s generator (shapes, colours, positions, counts) with ``--groups``
groups per scene at most (1 by default: "Three red stars in the top left corner, on a white
background.") and no word scenes; images are rendered at ``--image-size`` px and packed by the
pack job (``neo_data.pack.job.run_pack``, local Ray) into ``--seq-len``-token packs. The
held-out scenes are scenes whose caption no training sample has (``held_out_scenes`` rule).

Measured after each stage, on the held-out images:

* **held-out loss**: the mean cross-entropy of the caption tokens given the image, with the
  trainer's own forward (``model_inputs`` on packs of the held-out set) -- and the same with each
  caption paired with *another* held-out image (**shuffled**): the gap is what the image is
  worth. Before stage 1 this is the untrained NEO; the language model's own loss on the caption
  text alone is the text-only baseline.
* **exact match**: greedy ``generate()`` from ``<image>\\nDescribe the image.`` against the
  scene's caption; per-attribute accuracy (count, colour, shape, position, background) for
  one-group scenes; and one question per image (``qa_for``) answered exactly. The ``other``
  columns score the same answers against a *different* held-out scene's truth (what a model
  that ignores the image would reach).

Defaults take about 30 minutes on 2 cores (96 px images: 3 x 3 tokens, one per grid cell of the
generator); in that budget the debug model learns background and object colour. With
``--steps 300 1500 300`` (about 50 minutes) it also counts (83%) and starts on position; shapes,
a few pixels wide at 96 px, stay the hardest.

Training loss curves come from each stage's ``metrics.jsonl``. Every figure is printed as tables;
``--out`` keeps the data, manifests, checkpoints and a ``results.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neo_data.encoding.tokens import load_tokenizer, render_turns  # noqa: E402
from neo_data.synthetic import scenes as demo  # noqa: E402

STAGES = ("pretrain", "midtrain", "sft")
LOCAL = fsspec.filesystem("file")
DESCRIBE = demo.DESCRIBE_QUESTION


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def scenes(seed: int, stream: str, n: int, groups: int) -> list[demo.Scene]:
    rngs = (random.Random(f"bench-learning/{seed}/{stream}/{i}") for i in range(n))
    return [demo.make_scene(r, max_groups=groups, word_fraction=0.0) for r in rngs]


def held_out(train: list[demo.Scene], seed: int, n: int, groups: int) -> list[demo.Scene]:
    """``n`` scenes whose caption no training scene has (and distinct among themselves)."""
    seen = {demo.caption_for(s) for s in train}
    out, i = [], 0
    while len(out) < n:
        (scene,) = scenes(seed, f"held-out-{i}", 1, groups)
        i += 1
        if demo.caption_for(scene) not in seen:
            seen.add(demo.caption_for(scene))
            out.append(scene)
    return out


def png(scene: demo.Scene, size: int) -> dict[str, Any]:
    data = demo.render_scene(scene, (size, size), "png")
    return demo._image_entry(data, (size, size))


def conversation(scene: demo.Scene, rng: random.Random, turns: int) -> list[dict[str, str]]:
    """``turns`` question/answer pairs about one image, "Describe the image." among them."""
    qas = demo.qa_for(scene, rng)
    describe = next(qa for qa in qas if qa[0] == DESCRIBE)
    others = [qa for qa in qas if qa[0] != DESCRIBE][: turns - 1]
    pairs = [describe, *others]
    rng.shuffle(pairs)
    out = []
    for i, (q, a) in enumerate(pairs):
        out += [
            {"role": "user", "content": f"<image>\n{q}" if i == 0 else q},
            {"role": "assistant", "content": a},
        ]
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    demo._write_rows(LOCAL, str(path), rows)  # the demo dataset's writer (curated schema)
    return str(path)


def caption_rows(
    scenes_: list[demo.Scene], size: int, source: str, images: list[demo.Scene] | None = None
) -> list[dict[str, Any]]:
    """Caption rows; ``images`` (default: the scenes themselves) are the pictures shown."""
    rows = []
    for i, (scene, shown) in enumerate(zip(scenes_, images or scenes_, strict=True)):
        caption = {"text": demo.caption_for(scene), "provenance": demo.ORIGINAL_PROVENANCE}
        meta = {"scenes": [scene.to_meta()]}
        rows.append(
            demo._row("caption", source, 0, i, url=f"bench://{source}/{i}", meta=meta,
                      images=[png(shown, size)], captions=[caption])
        )  # fmt: skip
    return rows


def conversation_rows(
    scenes_: list[demo.Scene], size: int, seed: int, turns: int
) -> list[dict[str, Any]]:
    rows = []
    for i, scene in enumerate(scenes_):
        chat = conversation(scene, random.Random(f"bench-learning/{seed}/chat/{i}"), turns)
        rows.append(
            demo._row("conversation", "bench-conversations", 0, i, url=f"bench://chat/{i}",
                      meta={"scenes": [scene.to_meta()]}, images=[png(scene, size)],
                      conversation=chat)
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# Stage 0: the language model
# ---------------------------------------------------------------------------------------------


def lm_texts(
    tok, scenes_: list[demo.Scene], seed: int, turns: int
) -> list[tuple[list[int], list[int]]]:
    """The training conversations as chat text with the image removed: (token ids, labels),
    the answers supervised (the packer's rule), as in a chat model's instruction data."""
    out = []
    for i, scene in enumerate(scenes_):
        chat = conversation(scene, random.Random(f"bench-learning/{seed}/lm/{i}"), turns)
        pairs = [(t["role"], t["content"].replace("<image>\n", "")) for t in chat]
        rendered = render_turns(tok, pairs, [])
        out.append((rendered.input_ids.tolist(), rendered.labels().tolist()))
    return out


def qwen3_config():
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )  # fmt: skip


def batch_loss(model, seqs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of a right-padded batch of (ids, labels), and its target count. The
    vocabulary projection runs on the target rows only, a chunk at a time (the trainer's
    ``chunked_token_loss``): the 151,936-wide logits of every position would dominate."""
    from neo_model.loss import chunked_token_loss

    width = max(len(s) for s, _ in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, (s, lab) in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        labels[r, : len(s)] = torch.tensor(lab)
        mask[r, : len(s)] = 1
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = labels != -100
    rows, targets = hidden[keep], labels[keep]
    loss = chunked_token_loss(rows, model.lm_head.weight, targets, torch.ones(len(targets)))
    return loss, len(targets)


def train_lm(
    out: Path, texts: list[tuple[list[int], list[int]]], steps: int, lr: float, seed: int
) -> list[dict]:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(seed)
    curve = []
    for step in range(1, steps + 1):
        for g in opt.param_groups:  # warm-up 10%, then cosine to 10%
            w = min(1.0, step / max(1, steps // 10))
            g["lr"] = lr * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss, n = batch_loss(model, rng.sample(texts, 16))
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps:
            curve.append({"step": step, "loss": float(loss.detach()) / n})
        if step % 50 == 0:
            print(f"[bench] language model step {step}: loss {curve[-1]['loss']:.3f}", flush=True)
    model.save_pretrained(out)
    return curve


@torch.no_grad()
def lm_caption_loss(path: Path, tok, held: list[demo.Scene]) -> float:
    """The language model's loss per supervised token on the held-out captions, given only the
    text of the question (the packer's label rule: the answer and its ``<|im_end|>\\n``)."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(path).eval()
    total, count = 0.0, 0
    for scene in held:
        rendered = render_turns(
            tok, [("user", DESCRIBE), ("assistant", demo.caption_for(scene))], []
        )
        ids = torch.tensor(rendered.input_ids, dtype=torch.long)[None]
        labels = torch.tensor(rendered.labels(), dtype=torch.long)
        logits = model(input_ids=ids).logits[0].float()
        total += float(
            torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        )
        count += int((labels != -100).sum())
    return total / count


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


@torch.no_grad()
def packed_loss(model, url: str) -> float:
    """Mean cross-entropy per supervised token over every pack of a packed dataset."""
    from neo_data.loader import PackStream
    from neo_model.loss import loss_weights
    from neo_model.train.loop import model_inputs

    stream = PackStream(url, 0, 1, seed=0)
    total, count = 0.0, 0.0
    for position in range(len(stream.order)):
        b = model_inputs(stream.load(position), torch.device("cpu"), 1)
        w = loss_weights(b["labels"], b["sample_ids"], "token")
        out = model(
            b["input_ids"], b["t_index"], b["h_index"], b["w_index"], b["image_ordinal"],
            sample_ids=b["sample_ids"], pixel_values=b["pixel_values"], labels=b["labels"],
            loss_weights=w,
        )  # fmt: skip
        total += float(out.loss)
        count += float(w.sum())
    return total / count


CAPTION_RE = re.compile(
    r"^(?P<lead>\w+) (?P<colour>\w+) (?P<shape>\w+) (?P<where>.+), on an? (?P<bg>\w+) background\.$"
)
SINGULAR = {**{s: s for s in demo.SHAPES}, **{p: s for s, p in demo.PLURALS.items()}}
PHRASE_POSITION = {v: k for k, v in demo.POSITION_PHRASES.items()}


def attributes(caption: str) -> dict[str, Any] | None:
    """count, colour, shape, position, background of a one-group caption (None: unparsable)."""
    m = CAPTION_RE.match(caption.strip())
    if m is None:
        return None
    lead = m["lead"].lower()
    count = 1 if lead in ("a", "an") else (
        demo.NUMBER_WORDS.index(lead) if lead in demo.NUMBER_WORDS else None
    )  # fmt: skip
    return {
        "count": count,
        "colour": m["colour"],
        "shape": SINGULAR.get(m["shape"]),
        "position": PHRASE_POSITION.get(m["where"]),
        "background": m["bg"],
    }


ATTRS = ("count", "colour", "shape", "position", "background")


def score(answers: list[str], truths: list[str], scenes_: list[demo.Scene]) -> dict[str, float]:
    """Exact match, and per-attribute accuracy over the one-group scenes."""
    res = {"exact": float(np.mean([a.strip() == t for a, t in zip(answers, truths, strict=True)]))}
    one = [(a, s) for a, s in zip(answers, scenes_, strict=True) if len(s.groups) == 1]
    for attr in ATTRS:
        hits = []
        for answer, scene in one:
            got, g = attributes(answer), scene.groups[0]
            truth = {"count": g.count, "colour": g.colour, "shape": g.shape,
                     "position": g.position, "background": scene.background}[attr]  # fmt: skip
            hits.append(got is not None and got[attr] == truth)
        res[attr] = float(np.mean(hits)) if hits else float("nan")
    return res


@torch.no_grad()
def answer(model, tok, images: list[Image.Image], questions: list[str], pixels: int) -> list[str]:
    from neo_model.generate import Prompt, SamplingParams, generate
    from neo_model.prompting import build_prompt

    out = []
    for s in range(0, len(images), 16):
        prompts = []
        for image, q in zip(images[s : s + 16], questions[s : s + 16], strict=True):
            ids, _, px = build_prompt(tok, [("user", f"<image>\n{q}")], [image], pixels, pixels)
            prompts.append(Prompt(ids, px))
        for ids in generate(model, prompts, SamplingParams(max_new_tokens=32)):
            out.append(tok.decode(ids).strip())
    return out


def evaluate(export: str, tok, held, images, qas, eval_urls, pixels) -> dict[str, Any]:
    from neo_model.weights import load_for_inference

    model, _ = load_for_inference(export, "cpu")
    res: dict[str, Any] = {
        "loss": packed_loss(model, eval_urls["matched"]),
        "loss_shuffled": packed_loss(model, eval_urls["shuffled"]),
    }
    captions = answer(model, tok, images, [DESCRIBE] * len(images), pixels)
    truths = [demo.caption_for(s) for s in held]
    res["describe"] = score(captions, truths, held)
    # baseline: the same answers scored against the next scene's truth (ignoring the image)
    rolled = held[1:] + held[:1]
    res["describe_other"] = score(captions, [demo.caption_for(s) for s in rolled], rolled)
    replies = answer(model, tok, images, [q for q, _ in qas], pixels)
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
    train_scenes = scenes(args.seed, "train", args.captions + args.conversations, args.groups)
    cap_scenes, chat_scenes = train_scenes[: args.captions], train_scenes[args.captions :]
    held = held_out(train_scenes, args.seed, args.held_out, args.groups)
    data = out / "data"
    files = {
        "captions": write_rows(data / "captions.parquet",
                               caption_rows(cap_scenes, args.image_size, "bench-captions")),
        "conversations": write_rows(data / "conversations.parquet",
                                    conversation_rows(chat_scenes, args.image_size, args.seed,
                                                      args.turns)),
        "held_out": write_rows(data / "held_out.parquet",
                               caption_rows(held, args.image_size, "bench-held-out")),
        "held_out_shuffled": write_rows(
            data / "held_out_shuffled.parquet",
            caption_rows(held, args.image_size, "bench-held-out-shuffled", held[1:] + held[:1])),
    }  # fmt: skip
    images = [
        Image.open(io.BytesIO(demo.render_scene(s, (args.image_size,) * 2, "png"))).convert("RGB")
        for s in held
    ]
    qas = [
        next(qa for qa in demo.qa_for(s, random.Random(f"bench-learning/q/{i}")) if qa[0] != DESCRIBE)
        for i, s in enumerate(held)
    ]  # fmt: skip
    timings["data"] = time.perf_counter() - t0

    from neo_data.ray_env import init_ray

    init_ray()
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
        lm_dir, lm_texts(tok, train_scenes, args.seed, args.turns), args.lm_steps, args.lm_lr,
        args.seed,
    )  # fmt: skip
    lm_loss = lm_caption_loss(lm_dir, tok, held)
    print(f"[bench] language model: {args.lm_steps} steps, {time.perf_counter() - t0:.0f} s, held-out "
          f"caption loss from text alone {lm_loss:.3f}", flush=True)  # fmt: skip
    timings["lm"] = time.perf_counter() - t0

    pixels = args.image_size * args.image_size
    results: dict[str, Any] = {"args": vars(args), "lm_curve": lm_curve, "lm_caption_loss": lm_loss}
    results["init"] = evaluate(
        untrained_export(lm_dir, out / "models" / "neo-init", 2), tok, held, images, qas,
        eval_urls, pixels,
    )  # fmt: skip
    progress("init", results["init"], 0.0)
    previous = {"kind": "qwen3", "path": str(lm_dir), "pre_buffer_layers": 2}
    curves: dict[str, list[dict]] = {}
    for stage, steps, lr in zip(STAGES, args.steps, args.lr, strict=True):
        run_dir = out / "train" / stage
        if run_dir.exists():
            shutil.rmtree(run_dir)
        m = write_manifest(out / "manifests" / f"train-{stage}.yaml", {
            "name": f"bench-{stage}", "stage": stage,
            "data": {"curated": stage_data[stage], "packed": str(out / "packed" / stage)},
            "pack": pack_cfg,
            "train": {
                "init": previous, "output": str(run_dir), "steps": steps, "lr": lr,
                "warmup": 0.05, "num_workers": 1, "log_every": 10,
                "checkpoint_every": steps, "seed": args.seed,
            },
        })  # fmt: skip
        timings[stage] = train(m, out / f"train-{stage}.log")
        curves[stage] = [
            json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        export = str(run_dir / "export")
        results[stage] = evaluate(export, tok, held, images, qas, eval_urls, pixels)
        progress(stage, results[stage], timings[stage])
        previous = {"kind": "neo", "path": export}
    timings["total"] = time.perf_counter() - t_all
    results["curves"], results["timings"] = curves, timings
    results["packed"] = {s: packed[s]["totals"] for s in STAGES}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report(results, args, len(held))
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
