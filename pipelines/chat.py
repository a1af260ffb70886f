"""``neo chat --checkpoint DIR [--image FILE ...] ["question"]``: talk to a NEO checkpoint.

With a question: print one answer and exit. Without: a multi-turn conversation on stdin
(``you> `` / ``neo> ``); ``/image PATH`` attaches an image to the next question, ``/reset``
starts over (images included), ``/exit`` or end of input quits. ``--image`` files go with the
first question.

A prompt is prepared exactly like training data: the packer's smart resize (factor 32) and
Pillow bicubic resize, ImageNet normalisation, and the ``neo1_0`` template through
:func:`neo_data.encoding.tokens.render_turns`, with a user turn of ``<image>\\n`` per image + the question.
The pixel budget defaults to the checkpoint's ``vision_config`` ``min_pixels``/``max_pixels``,
else to 1,280 .. 4,096 image tokens (how the released SFT models are evaluated).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TextIO

import fsspec
import torch
from PIL import Image

from neo_data.encoding.images import MAX_DECODE_PIXELS, ImageRejected, open_image, smart_resize
from neo_data.encoding.tokens import (
    BUILTIN,
    NeoTokenizer,
    TemplateError,
    load_tokenizer,
    user_content,
)
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.model import NeoChatModel
from neo_model.prompting import build_prompt, pixel_budget
from neo_model.weights import CheckpointError, load_for_inference

HELP = "commands: /image PATH (attach to the next question), /reset, /exit"


class ChatError(Exception):
    """A problem reported as one line on stderr, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Loading, with errors that name what is wrong
# ---------------------------------------------------------------------------------------------


def load_image(source: str, min_pixels: int, max_pixels: int) -> Image.Image:
    """Decode an image (local path or fsspec URL); reject it now if smart resize would."""
    try:
        with fsspec.open(source, "rb") as f:
            data = f.read()
    except Exception as e:  # any fsspec backend's errors (missing file, credentials, protocol)
        raise ChatError(f"image {source}: cannot read it ({type(e).__name__}: {e})") from e
    try:
        image = open_image(data, MAX_DECODE_PIXELS)
        smart_resize(image.height, image.width, min_pixels, max_pixels)
    except ImageRejected as e:
        raise ChatError(f"image {source}: {e.reason.replace('_', ' ')}: {e.detail}") from e
    return image


def open_checkpoint(path: str, device: str) -> tuple[NeoChatModel, dict]:
    """:func:`neo_model.weights.load_for_inference`, its errors as :class:`ChatError`."""
    try:
        return load_for_inference(path, device)
    except CheckpointError as e:
        raise ChatError(str(e)) from e


# ---------------------------------------------------------------------------------------------
# The conversation
# ---------------------------------------------------------------------------------------------


@dataclass
class Chat:
    """A conversation: its turns, the images of its ``<image>`` placeholders, pending images."""

    model: NeoChatModel
    tok: NeoTokenizer
    params: SamplingParams
    min_pixels: int
    max_pixels: int
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    pending: list[Image.Image] = field(default_factory=list)  # for the next question

    def attach(self, source: str) -> None:
        self.pending.append(load_image(source, self.min_pixels, self.max_pixels))

    def reset(self) -> None:
        self.turns, self.images, self.pending = [], [], []

    def ask(self, question: str) -> str:
        """Answer ``question`` (with the pending images) and add both to the history."""
        turns = [*self.turns, ("user", user_content(question, len(self.pending)))]
        images = [*self.images, *self.pending]
        system = [("system", self.system)] if self.system else []
        ids, _, pixels = build_prompt(
            self.tok, system + turns, images, self.min_pixels, self.max_pixels
        )
        new = generate(self.model, [Prompt(ids, pixels)], self.params)[0]
        answer = self.tok.decode(new, skip_special_tokens=True).strip()
        self.turns = [*turns, ("assistant", answer)]
        self.images, self.pending = images, []
        return answer


def converse(chat: Chat, stdin: TextIO, stdout: TextIO) -> None:
    """The interactive loop; works on a pipe too (the question is then echoed after the prompt)."""
    echo = not stdin.isatty()
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            print(file=stdout)
            return
        line = line.strip()
        if echo:
            print(line, file=stdout)
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            chat.reset()
            print("(conversation cleared)", file=sys.stderr)
        elif line.startswith("/image ") and line[7:].strip():
            source = line[7:].strip()
            try:
                chat.attach(source)
                print(f"(attached {source} to the next question)", file=sys.stderr)
            except ChatError as e:
                print(f"neo chat: {e}", file=sys.stderr)
        elif line.startswith("/"):
            print(HELP, file=sys.stderr)
        else:
            try:
                print(f"neo> {chat.ask(line)}", file=stdout, flush=True)
            except TemplateError as e:
                print(f"neo chat: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="neo chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("question", nargs="?", help="ask once and exit; without it, a conversation")
    ap.add_argument("--checkpoint", required=True, help="a NEO checkpoint folder (released layout)")
    ap.add_argument("--image", action="append", default=[], help="image file or URL (repeatable)")
    ap.add_argument("--system", help="a system message")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-pixels", type=int, help="default: the checkpoint's, else 1280 tokens")
    ap.add_argument("--max-pixels", type=int, help="default: the checkpoint's, else 4096 tokens")
    ap.add_argument("--tokenizer", default=BUILTIN, help="builtin:qwen3 or a tokenizer.json dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if (
        args.max_new_tokens < 1
        or args.temperature < 0
        or (args.top_k is not None and args.top_k < 1)
    ):
        ap.error("--max-new-tokens and --top-k must be >= 1, --temperature >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        model, vision = open_checkpoint(args.checkpoint, args.device)
        try:
            min_pixels, max_pixels = pixel_budget(model, vision, args.min_pixels, args.max_pixels)
        except ValueError as e:
            raise ChatError(str(e)) from e
        try:
            tok = load_tokenizer(args.tokenizer)
        except (OSError, ValueError) as e:
            raise ChatError(f"tokenizer {args.tokenizer}: {e}") from e
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
        )
        chat = Chat(model, tok, params, min_pixels, max_pixels, args.system)
        for source in args.image:
            chat.attach(source)
        if args.question is None:
            converse(chat, sys.stdin, sys.stdout)
            return 0
        try:
            print(chat.ask(args.question))
        except TemplateError as e:
            raise ChatError(str(e)) from e
    except ChatError as e:
        print(f"neo chat: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
