"""The main job on the embedded default: a language model, then curate -> recaption -> pack ->
train stages 1, 2, 3 -> ask the trained model about images it never saw.

    neo demo [--out runs/demo] [--captions N --recaption N --conversations N --texts N]

Local Ray on 127.0.0.1, local files, the bundled generator's images served by a loopback HTTP
server. The data is the learning cut of the generator (``neo_data.synthetic.learning.WebRows``:
one group of shapes per scene, 96 px PNGs, 3 x 3 image tokens). No model hub here, so the first
step trains the tiny Qwen3 the stage-1 manifest starts from on the *text* of the demo's
conversations (images removed: what a Qwen3 checkpoint is to the paper); a random debug NEO is
the recaption job's captioner. The manifests are manifests/demo.yaml (stage 1, curation,
recaption) and demo-midtrain.yaml / demo-sft.yaml; every path in them under runs/demo moves to
--out. The last step answers "Describe the image." about held-out scenes (captions no training
row has) and scores them per attribute; ``<out>/summary.json`` keeps every step and that table.
Ray's own logging goes to ``<out>/logs/ray.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neo_data.manifest import Manifest, example_path, load_manifest

STAGE_MANIFESTS = ("demo.yaml", "demo-midtrain.yaml", "demo-sft.yaml")
DEFAULT_ROOT = "runs/demo"
MARKER = ".neo-demo"  # a directory `neo demo` made (and may replace on the next run)
LM_DIR = "models/qwen3-lm"  # the stage-1 manifest's train.init.path, under the run directory
SHOWN = 4  # held-out answers printed beside their truth


class Steps:
    """Runs the steps, prints a line before and after each (with wall and CPU seconds: on a
    shared machine the CPU seconds say what a step costs) and keeps the summary rows."""

    def __init__(self, planned: int) -> None:
        from neo_data.console import CpuMeter

        self.rows: list[dict[str, Any]] = []
        self.planned = planned
        self.cpu = CpuMeter()

    def run(self, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
        print(f"\n==> [{len(self.rows) + 1}/{self.planned}] {name}", flush=True)
        t0, c0 = time.perf_counter(), self.cpu.seconds()
        result = fn()
        seconds, cpu = time.perf_counter() - t0, self.cpu.seconds() - c0
        what = describe(result)
        self.rows.append({"step": name, "seconds": seconds, "cpu_seconds": cpu, "result": what})
        print(f"<== {name}: {what} ({seconds:.1f} s, {cpu:.0f} CPU s)", flush=True)
        return result

    def summary(self) -> str:
        lines = [f"  {'step':<16}{'seconds':>9}{'CPU s':>8}  result"]
        lines += [
            f"  {r['step']:<16}{r['seconds']:>9.1f}{r['cpu_seconds']:>8.0f}  {r['result']}"
            for r in self.rows
        ]
        total = sum(r["seconds"] for r in self.rows)
        cpu = sum(r["cpu_seconds"] for r in self.rows)
        lines.append(f"  {'total':<16}{total:>9.1f}{cpu:>8.0f}")
        return "\n".join(lines)


def relocate(manifest: Manifest, root: str) -> Manifest:
    """The manifest with every path under ``runs/demo`` moved under ``root``."""

    def move(value: Any) -> Any:
        if isinstance(value, str) and (
            value == DEFAULT_ROOT or value.startswith(DEFAULT_ROOT + "/")
        ):
            return root + value[len(DEFAULT_ROOT) :]
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return Manifest.model_validate(move(manifest.model_dump(mode="json")))


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not made by `neo demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `neo demo`; the next run replaces this directory\n")


def train_language_model(out: Path, rows, args, tok) -> str:
    """The stage-1 start: a debug Qwen3 trained on the demo conversations' text (no images)."""
    from transformers.utils import logging as hf_logging

    from neo_data.console import Progress
    from neo_data.synthetic.learning import lm_texts
    from neo_model.testing import train_tiny_lm

    hf_logging.disable_progress_bar()  # the console's lines are the job's
    scenes = rows.training_scenes(args.seed, args.captions + args.recaption, args.conversations)
    texts = lm_texts(tok, scenes, args.seed, rows.turns)

    line = Progress("language model", args.lm_steps, "steps")
    model, curve = train_tiny_lm(
        texts, args.lm_steps, args.lm_lr, args.seed,
        on_progress=lambda step, loss: line.update(step, f"loss {loss:.3f}"),
    )  # fmt: skip
    model.save_pretrained(out / LM_DIR)
    return f"{len(texts)} conversations' text, {args.lm_steps} steps, loss {curve[-1]['loss']:.3f}"


def make_captioner(out: Path, pack) -> str:
    """A random debug NEO: the recaption job's captioner (its captions stay out of training)."""
    from neo_model.config import debug
    from neo_model.testing import save_random_neo

    captioner = debug().replace(min_pixels=pack.min_pixels, max_pixels=pack.max_pixels)
    save_random_neo(out / "models" / "captioner", captioner)
    return "random debug NEO captioner"


def answer_held_out(export: str, pack, scenes, size: int) -> list[str]:
    """The final model's greedy answer to "Describe the image." about each held-out scene."""
    from neo_data.encoding.tokens import load_tokenizer
    from neo_data.synthetic.learning import eval_images
    from neo_data.synthetic.texts import DESCRIBE_QUESTION
    from neo_model.evaluation import answer_questions
    from neo_model.weights import load_for_inference

    model, _ = load_for_inference(export, "cpu")
    images = eval_images(scenes, size)
    return answer_questions(
        model, load_tokenizer(pack.tokenizer), images, [DESCRIBE_QUESTION] * len(images),
        pack.min_pixels, pack.max_pixels, max_new_tokens=32, batch_size=16,
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="neo demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_ROOT, help="run directory (replaced on each run)")
    ap.add_argument("--captions", type=int, default=2400)
    ap.add_argument("--recaption", type=int, default=16, help="caption rows that get recaptioned")
    ap.add_argument("--conversations", type=int, default=1200)
    ap.add_argument("--texts", type=int, default=120)
    ap.add_argument("--held-out", type=int, default=96, help="held-out scenes scored at the end")
    ap.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="px, rendered and packed (default: demo.yaml's pixel budget, 96: 3x3 image tokens)",
    )
    ap.add_argument("--lm-steps", type=int, default=150, help="steps of the language model")
    ap.add_argument("--lm-lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="steps of every stage (default: the manifests')",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every stage's steps by this (a quicker look: 0.5; it learns less)",
    )
    return ap.parse_args(argv)


def stage_manifests(
    root: str, train_steps: int | None, scale: float, image_size: int | None = None
) -> list[Manifest]:
    """The three stage manifests under ``root``, with ``train_steps`` (every stage) or each
    stage's own steps times ``scale`` (checkpointing at the last step), and every image packed
    at ``image_size`` x ``image_size`` px (default: the manifests' pixel budget)."""
    out = []
    for name in STAGE_MANIFESTS:
        steps = train_steps or max(1, round(load_manifest(example_path(name)).train.steps * scale))
        overrides: dict[str, Any] = {"train.steps": steps, "train.checkpoint_every": steps}
        if image_size is not None:
            pixels = image_size * image_size
            overrides.update({"pack.min_pixels": pixels, "pack.max_pixels": pixels})
        out.append(relocate(load_manifest(example_path(name), overrides), root))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from neo_data.console import LOG_NAME
    from neo_data.curate import report as curate_report
    from neo_data.curate.job import run_curate
    from neo_data.encoding.tokens import load_tokenizer
    from neo_data.pack import report as pack_report
    from neo_data.pack.job import run_pack
    from neo_data.ray_env import init_ray
    from neo_data.recaption.job import run_recaption
    from neo_data.synthetic.evaluate import format_table, held_out_table
    from neo_data.synthetic.learning import WebRows
    from neo_data.synthetic.texts import caption_for
    from neo_data.synthetic.web import serve_directory, write_web_sources
    from neo_model.train.ray_train import run_stage

    out = Path(args.out)
    prepare_out(out)
    root = str(out).rstrip("/")
    stages = stage_manifests(root, args.train_steps, args.scale, args.image_size)
    first = stages[0]
    pack = first.resolved_pack()
    args.image_size = args.image_size or math.isqrt(pack.max_pixels)  # the manifest's side
    rows = WebRows(size=args.image_size)
    steps = Steps(planned=4 + 2 * len(stages) + 2)
    tok = load_tokenizer(pack.tokenizer)
    # before Ray starts: the language model needs none, and Ray's processes would idle meanwhile
    steps.run("language model", lambda: train_language_model(out, rows, args, tok), str)
    ray_log = init_ray(log_file=out / LOG_NAME)
    steps.run("captioner", lambda: make_captioner(out, pack), str)
    with serve_directory(out / "web") as base_url:
        steps.run(
            "demo data",
            lambda: write_web_sources(
                out / "web",
                base_url,
                captions=args.captions,
                recaption=args.recaption,
                conversations=args.conversations,
                texts=args.texts,
                seed=args.seed,
                rows=rows,
            ),  # fmt: skip
            lambda paths: f"{len(paths)} source tables, images served at {base_url}",
        )
        curated = steps.run(
            "curate",
            lambda: run_curate(first),
            lambda r: f"{r.report['totals']['kept']} kept of {r.report['totals']['rows_in']} rows",
        )
        print(curate_report.format_report(curated.report))
    steps.run(
        "recaption",
        lambda: run_recaption(first),
        lambda r: (
            f"{r.report['totals']['recaptioned']} of {r.report['totals']['rows']} rows "
            f"recaptioned, failed {sum(r.report['totals']['failed'].values())}"
        ),
    )
    export = None
    for manifest in stages:
        packed = steps.run(f"pack {manifest.stage}", lambda m=manifest: run_pack(m), _packs)
        print(pack_report.format_report(packed.index))
        trained = steps.run(f"train {manifest.stage}", lambda m=manifest: run_stage(m), _trained)
        export = trained.export
    held = rows.held_out(args.seed, args.held_out, args.captions + args.recaption,
                         args.conversations)  # fmt: skip
    answers = steps.run(
        "answer",
        lambda: answer_held_out(export, pack, held, args.image_size),
        lambda a: f"{len(a)} held-out images described",
    )
    table = held_out_table(answers, held)
    print("\nthe trained model on images it never saw (debug size, minutes of CPU training):")
    for scene, answer in list(zip(held, answers, strict=True))[:SHOWN]:
        print(f"  Q: Describe the image.\n  A: {answer}\n  truth: {caption_for(scene)}\n")
    print("held-out accuracy per attribute (chance: a uniform guess; other image: the same "
          "answers scored against another held-out image, what ignoring the image reaches)")  # fmt: skip
    print(format_table(table))
    print("\nsteps")
    print(steps.summary())
    summary = {
        "steps": steps.rows,
        "held_out": table,
        "examples": [
            {"truth": caption_for(s), "answer": a} for s, a in zip(held, answers, strict=True)
        ][:16],
        "ray_log": str(ray_log),
        "export": export,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary: {root}/summary.json   Ray's own logging: {ray_log}")
    print(
        f"next:  neo shards serve {root}/packed/pretrain   |   "
        f'neo chat --checkpoint {export} --image FILE "Describe the image."'
    )
    return 0


def _packs(result) -> str:
    t = result.index["totals"]
    return f"{t['packs']} packs, {t['samples']} samples, fill {t['fill']:.3f}"


def _trained(result) -> str:
    m = result.metrics
    return f"{m.get('step')} steps, loss {m.get('loss', float('nan')):.3f}, export {result.export}"


if __name__ == "__main__":
    sys.exit(main())
