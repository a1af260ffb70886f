"""``neo serve --checkpoint DIR``: an OpenAI-compatible chat-completions endpoint for a NEO
checkpoint (``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``).

Binds to 127.0.0.1 unless ``--host`` says otherwise. Images are sent as ``data:`` URLs in
``image_url`` parts; see :mod:`neo_model.serve.protocol` for the limits and error answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from neo_data.encoding.tokens import BUILTIN, load_tokenizer
from neo_data.hostcheck import allowed_hosts
from neo_model.prompting import pixel_budget
from neo_model.serve.app import create_app
from neo_model.serve.protocol import ServeSettings
from neo_model.weights import CheckpointError, load_for_inference


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="neo serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a NEO checkpoint folder (released layout)")
    ap.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", help="the `model` clients send (default: folder name)")
    ap.add_argument("--tokenizer", default=BUILTIN, help="builtin:qwen3 or a tokenizer.json dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-pixels", type=int, help="default: the checkpoint's, else 1280 tokens")
    ap.add_argument("--max-pixels", type=int, help="default: the checkpoint's, else 4096 tokens")
    ap.add_argument("--max-request-mb", type=float, default=32.0, help="request body limit")
    ap.add_argument("--max-images", type=int, default=16, help="images per request")
    ap.add_argument("--max-prompt-tokens", type=int, default=32_768)
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="cap on max_tokens")
    ap.add_argument("--max-batch-size", type=int, default=8, help="requests generated together")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    limits = (args.max_request_mb, args.max_images, args.max_prompt_tokens, args.max_new_tokens,
              args.max_batch_size)  # fmt: skip
    if min(limits) <= 0:
        ap.error("the limits must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        model, vision = load_for_inference(args.checkpoint, args.device)
        min_pixels, max_pixels = pixel_budget(model, vision, args.min_pixels, args.max_pixels)
        tok = load_tokenizer(args.tokenizer)
    except (CheckpointError, OSError, ValueError) as e:
        print(f"neo serve: {e}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        served_model_name=args.served_model_name or Path(args.checkpoint).resolve().name,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        max_request_bytes=int(args.max_request_mb * (1 << 20)),
        max_images=args.max_images,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        default_max_tokens=min(512, args.max_new_tokens),
        max_batch_size=args.max_batch_size,
    )
    app = create_app(model, tok, settings, allowed_hosts(args.host, args.port))
    print(
        f"neo serve: {settings.served_model_name} on http://{args.host}:{args.port}/v1",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
