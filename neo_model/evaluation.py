"""Measuring a model on held-out data: loss per supervised token, and greedy answers to image
questions.

* :func:`packed_loss`: a NEO on every pack of a packed dataset, through the trainer's own
  ``model_inputs`` and token-weighted loss, so the figure is the training loss on unseen data.
* :func:`chat_loss`: a HF causal language model on chats rendered with the NEO template (the
  text-only baseline: what the language alone predicts of an answer).
* :func:`answer_questions`: greedy ``generate()`` for one question about each image, prompts
  built exactly like training data (:func:`neo_model.prompting.build_prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from neo_data.encoding.tokens import NeoTokenizer, render_turns, user_content
from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_data.loader import PackStream
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.loss import loss_weights
from neo_model.model import NeoChatModel
from neo_model.prompting import build_prompt
from neo_model.train.loop import model_inputs


@torch.no_grad()
def packed_loss(model: NeoChatModel, url: str) -> float:
    """Mean cross-entropy per supervised token over every pack of the packed dataset at ``url``."""
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


@torch.no_grad()
def chat_loss(model, tok: NeoTokenizer, chats: Sequence[Sequence[tuple[str, str]]]) -> float:
    """A HF causal LM's loss per supervised token on text-only chats of (role, content) turns,
    under the packer's label rule (each answer and its ``<|im_end|>\\n``)."""
    total, count = 0.0, 0
    for turns in chats:
        rendered = render_turns(tok, list(turns), [])
        ids = torch.tensor(rendered.input_ids, dtype=torch.long)[None]
        labels = torch.tensor(rendered.labels(), dtype=torch.long)
        logits = model(input_ids=ids).logits[0].float()
        total += float(
            torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        )
        count += int((labels != -100).sum())
    return total / count


@torch.no_grad()
def answer_questions(
    model: NeoChatModel,
    tok: NeoTokenizer,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    min_pixels: int,
    max_pixels: int,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answer to ``questions[i]`` about ``images[i]`` (the image shown before the
    question), ``batch_size`` prompts per ``generate()`` call; decoded and stripped."""
    out = []
    for s in range(0, len(images), batch_size):
        prompts = []
        batch = zip(images[s : s + batch_size], questions[s : s + batch_size], strict=True)
        for image, question in batch:
            turns = [("user", user_content(question, 1, IMAGE_PLACEHOLDER))]
            ids, _, pixels = build_prompt(tok, turns, [image], min_pixels, max_pixels)
            prompts.append(Prompt(ids, pixels))
        for ids in generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens)):
            out.append(tok.decode(ids).strip())
    return out
