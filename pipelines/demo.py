"""The main job on the embedded default: curate -> recaption -> pack -> train stages 1, 2, 3 ->
ask the trained model about an image it never saw.

    neo demo [--out runs/demo] [--captions N --recaption N --conversations N --texts N]

Local Ray on 127.0.0.1, local files, the bundled generator's images served by a loopback HTTP
server, a tiny random Qwen3 as the stage-1 starting point (no model hub here) and the debug NEO
size, so that the chain runs on a laptop CPU. The manifests are manifests/demo.yaml (stage 1,
curation, recaption) and demo-midtrain.yaml / demo-sft.yaml; every path in them under runs/demo
moves to --out.
"""

from __future__ import annotations

import argparse
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


class Steps:
    """Runs the steps, prints progress and keeps the summary rows."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def run(self, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
        print(f"\n==> {name}", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.rows.append((name, seconds, describe(result)))
        print(f"<== {name}: {describe(result)} ({seconds:.1f} s)", flush=True)
        return result

    def summary(self) -> str:
        lines = [f"  {'step':<16}{'seconds':>9}  result"]
        lines += [f"  {n:<16}{s:>9.1f}  {what}" for n, s, what in self.rows]
        total = sum(s for _, s, _ in self.rows)
        lines.append(f"  {'total':<16}{total:>9.1f}")
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


def make_models(out: Path, pack) -> str:
    """A tiny random Qwen3 (the stage-1 start) and a random debug NEO (the demo captioner)."""
    from neo_model.config import debug
    from neo_model.testing import save_random_neo, tiny_qwen3

    qwen = tiny_qwen3(tie=True, perturb_norms=False, intermediate_size=128, head_dim=32)
    qwen.save_pretrained(out / "models" / "qwen3-tiny")
    captioner = debug().replace(min_pixels=pack.min_pixels, max_pixels=pack.max_pixels)
    save_random_neo(out / "models" / "captioner", captioner)
    return "tiny random Qwen3 (2 layers, hidden 64); random debug NEO captioner"


def answer_held_out(
    export: str, pack, seed: int, counts: dict[str, int]
) -> list[tuple[str, str, str]]:
    """Ask the final model about held-out scenes: (question, answer, truth) rows."""
    import random

    from neo_data.encoding.tokens import load_tokenizer
    from neo_data.synthetic.dataset import held_out_scenes
    from neo_data.synthetic.render import draw_scene
    from neo_data.synthetic.texts import DESCRIBE_QUESTION, caption_for, qa_for
    from neo_model.evaluation import answer_questions
    from neo_model.weights import load_for_inference

    model, _ = load_for_inference(export, "cpu")
    tok = load_tokenizer(pack.tokenizer)
    images, questions, truths = [], [], []
    for scene in held_out_scenes(seed, 2, **counts):
        image = draw_scene(scene, (256, 256))
        question, truth = qa_for(scene, random.Random(seed))[0]
        for q, t in ((DESCRIBE_QUESTION, caption_for(scene)), (question, truth)):
            images.append(image)
            questions.append(q)
            truths.append(t)
    answers = answer_questions(
        model, tok, images, questions, pack.min_pixels, pack.max_pixels,
        max_new_tokens=24, batch_size=1,
    )  # fmt: skip
    return list(zip(questions, answers, truths, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_ROOT, help="run directory (replaced on each run)")
    ap.add_argument("--captions", type=int, default=600)
    ap.add_argument("--recaption", type=int, default=32, help="caption rows that get recaptioned")
    ap.add_argument("--conversations", type=int, default=300)
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="steps of every stage (default: the manifests')",
    )
    args = ap.parse_args(argv)

    from neo_data.curate import report as curate_report
    from neo_data.curate.job import run_curate
    from neo_data.pack import report as pack_report
    from neo_data.pack.job import run_pack
    from neo_data.ray_env import init_ray
    from neo_data.recaption.job import run_recaption
    from neo_data.synthetic.web import serve_directory, write_web_sources
    from neo_model.train.ray_train import run_stage

    out = Path(args.out)
    prepare_out(out)
    root = str(out).rstrip("/")
    steps_override = {"train.steps": args.train_steps} if args.train_steps else None
    stages = [
        relocate(load_manifest(example_path(name), steps_override), root)
        for name in STAGE_MANIFESTS
    ]
    first = stages[0]
    pack = first.resolved_pack()
    steps = Steps()
    init_ray()
    steps.run("models", lambda: make_models(out, pack), lambda what: what)
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
    counts = {"captions": args.captions + args.recaption, "conversations": args.conversations,
              "texts": args.texts}  # fmt: skip
    answers = steps.run(
        "answer",
        lambda: answer_held_out(export, pack, args.seed, counts),
        lambda rows: f"{len(rows)} questions about 2 held-out images",
    )
    print("\nthe trained model on images it never saw (debug size, minutes of CPU training):")
    for q, a, t in answers:
        print(f"  Q: {q}\n  A: {a}\n  truth: {t}\n")
    print("steps")
    print(steps.summary())
    print(
        f"\nnext:  neo shards serve {root}/packed/pretrain   |   "
        f'neo chat --checkpoint {export} --image FILE "What is in the picture?"'
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
