"""Captioning backends: the transformers backend equals the model's own unbatched generate and
passes the generation settings as configured, the neo backend equals ``neo chat``'s prompt +
generate, failures stay on their row, vLLM's absence is a clear error. (The openai backend runs
against ``neo serve`` in tests/neo_model/serve/test_app.py; its requests are checked in
test_chat.py.)"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch
from PIL import Image

from neo_data.encoding.tokens import load_tokenizer, user_content
from neo_data.manifest.recaption import Backend, GenerationSpec, RecaptionSpec
from neo_data.recaption.captioners import (
    BACKENDS,
    Caption,
    Captioner,
    CaptionerUnavailable,
    TransformersCaptioner,
    backend_class,
    make_captioner,
)
from neo_data.recaption.chat import OpenAICaptioner
from neo_model.captioner import NeoCaptioner
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.prompting import build_prompt
from neo_model.testing import save_random_llava, save_random_neo
from neo_model.weights import load_for_inference
from tests.helpers import REPO, image_bytes

PROMPT = "Describe the image."
GEN = GenerationSpec(max_new_tokens=6)
CAP = 178_956_970


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    return save_random_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")


@pytest.fixture(scope="session")
def neo_dir(tmp_path_factory) -> Path:
    return save_random_neo(tmp_path_factory.mktemp("neo") / "neo-debug")


def pictures() -> list[bytes]:
    out = []
    for w, h, fmt in [(100, 70, "PNG"), (64, 96, "JPEG"), (50, 50, "PNG")]:
        img = Image.effect_mandelbrot((w, h), (-2, -1, 1, 1), 40).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def test_transformers_backend_equals_unbatched_hf_generate(llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    captioner = TransformersCaptioner(str(llava_dir), PROMPT, GEN, CAP, device="cpu")
    images = pictures()
    samples = [[b] for b in images] + [images[:2]]  # 2 images: a longer prompt, left padding
    got = captioner.caption(samples)
    assert all(c.text for c in got), got

    # the peer: HF's own model and processor, one image at a time, no padding
    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    processor = AutoProcessor.from_pretrained(llava_dir)
    for c, sample in zip(got, samples, strict=True):
        content = [{"type": "image"}] * len(sample) + [{"type": "text", "text": PROMPT}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in sample]
        inputs = processor(text=[text], images=decoded, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=GEN.max_new_tokens, do_sample=False)
        want = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert c.text == want.strip()


def test_transformers_backend_generates_with_the_configured_settings(llava_dir, monkeypatch):
    """What reaches ``generate``: sampling settings as configured (not greedy, none dropped),
    the seed set just before; greedy settings as ``do_sample=False`` alone."""
    gen = GenerationSpec(max_new_tokens=5, temperature=0.8, top_p=0.9, top_k=40, seed=3)
    seen = []
    for spec in (gen, GEN):
        captioner = TransformersCaptioner(str(llava_dir), PROMPT, spec, CAP, device="cpu")
        real = captioner.model.generate

        def spy(real=real, **kwargs):
            seen.append(
                {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
                | {"seed": torch.initial_seed()}
            )
            return real(**kwargs)

        monkeypatch.setattr(captioner.model, "generate", spy)
        assert captioner.caption([[pictures()[0]]])[0].text
    assert seen == [
        {"max_new_tokens": 5, "do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 40,
         "seed": 3},
        {"max_new_tokens": 6, "do_sample": False, "seed": 0},
    ]  # fmt: skip


def test_transformers_backend_records_a_corrupt_image_and_goes_on(llava_dir):
    captioner = TransformersCaptioner(str(llava_dir), PROMPT, GEN, CAP, device="cpu")
    images = [pictures()[0], b"\xff\xd8\xff\xe0 not a jpeg", b"", pictures()[1]]
    got = captioner.caption([[b] for b in images])
    assert [c.reason for c in got] == [None, "image_decode_error", "image_empty", None]
    assert got[0].text and got[3].text
    assert got[0].text == captioner.caption([[images[0]]])[0].text  # batch-independent


def test_neo_backend_equals_chat_prompt_and_generate(neo_dir):
    captioner = NeoCaptioner(str(neo_dir), PROMPT, GEN, CAP, device="cpu")
    tok = load_tokenizer()
    model, _ = load_for_inference(str(neo_dir), "cpu")
    images = pictures()
    got = captioner.caption([[b] for b in images] + [[images[0], images[1]]])
    assert all(c.text for c in got), got
    cfg = model.config
    for c, sample in zip(got, [[b] for b in images] + [[images[0], images[1]]], strict=True):
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in sample]
        turns = [("user", user_content(PROMPT, len(decoded)))]
        ids, _, pixels = build_prompt(tok, turns, decoded, cfg.min_pixels, cfg.max_pixels)
        new = generate(model, [Prompt(ids, pixels)], SamplingParams(max_new_tokens=6))[0]
        assert c.text == tok.decode(new, skip_special_tokens=True).strip()


def test_neo_backend_rejects_extreme_aspect_on_its_row(neo_dir):
    captioner = NeoCaptioner(str(neo_dir), PROMPT, GEN, CAP, device="cpu")
    got = captioner.caption([[image_bytes(400, 1)], [pictures()[2]]])
    assert got[0].reason == "aspect_ratio_too_extreme" and got[1].text


class Flaky(Captioner):
    """A backend whose model raises on one input: the base class must isolate it."""

    backend = "test"

    def __init__(self):
        super().__init__("m", "p", GEN, CAP)
        self.calls: list[int] = []

    def prepare(self, images):
        return self.decode(images[0]).width

    def run(self, prepared):
        self.calls.append(len(prepared))
        if 13 in prepared:
            raise RuntimeError("CUDA error: device-side assert (width 13)")
        return ["  " if w == 21 else f"w{w}" for w in prepared]


def test_a_failed_generation_stays_on_its_row():
    flaky = Flaky()
    got = flaky.caption([[image_bytes(w, 10)] for w in (10, 13, 21, 30)])
    assert got == [
        Caption("w10"),
        Caption.failed(
            "generation_error", "RuntimeError: CUDA error: device-side assert (width 13)"
        ),
        Caption.failed("empty_generation", "the model produced only whitespace"),
        Caption("w30"),
    ]
    assert flaky.calls == [4, 1, 1, 1, 1]  # the batch, then one by one


def test_a_programming_error_is_not_swallowed():
    class Broken(Flaky):
        def run(self, prepared):
            raise TypeError("bug")

    with pytest.raises(TypeError):
        Broken().caption([[image_bytes(10, 10)]])


def test_vllm_backend_without_vllm_says_what_to_do(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    spec = RecaptionSpec(input=["x"], output=str(tmp_path), backend="vllm", model="m")
    with pytest.raises(CaptionerUnavailable, match="pip install vllm"):
        make_captioner(spec)


def test_the_registry_holds_every_backend_the_manifest_accepts():
    assert set(BACKENDS) == set(get_args(Backend))
    assert BACKENDS["neo"] == "neo_model.captioner:NeoCaptioner"  # named, not imported
    assert backend_class("neo") is NeoCaptioner
    assert backend_class("transformers") is TransformersCaptioner
    assert backend_class("openai") is OpenAICaptioner
    with pytest.raises(ValueError, match="unknown recaption backend 'gpt'"):
        backend_class("gpt")


def test_the_recaption_job_does_not_import_neo_model():
    """neo_data never imports neo_model: the neo backend is imported only when chosen."""
    code = (
        "import sys; import neo_data.recaption.job; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'neo_model']"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
