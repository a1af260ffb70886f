"""The remote code of an export (``modeling_neo_chat.py``, loaded by ``AutoModel`` with
``trust_remote_code``) against ``neo_model``: the same logits, the same greedy answers, the
released ``chat`` / ``generate`` interface, and the released image preprocessing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from neo_data.encoding.positions import next_t, thw_indices
from neo_data.encoding.tokens import IM_END_ID, IMG_CONTEXT_ID, load_tokenizer, user_content
from neo_model.config import NeoConfig
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.hf_export import AUTO_MAP, REMOTE_CODE
from neo_model.prompting import build_prompt

TOL = 1e-5
GEN = {"max_new_tokens": 5, "do_sample": False}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [
        Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (500, 240, 3), dtype=np.uint8)),  # above max_pixels
    ]


@pytest.fixture(scope="module")
def processor(export_dir):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(export_dir, trust_remote_code=True)


def _neo_inputs(neo, turns, images):
    """neo's prompt for ``turns`` (ids ending in the assistant header) and its images."""
    c = neo.config
    return build_prompt(load_tokenizer(), turns, images, c.min_pixels, c.max_pixels)


def _neo_logits(neo, ids, grids, pixels) -> torch.Tensor:
    """neo_model's logits ``[L, vocab]`` for a prompt, its generated tail at T = next_t + k."""
    t, h, w, ordinal = thw_indices(np.asarray(ids), grids)
    cols = [torch.as_tensor(np.asarray(c, dtype=np.int64))[None] for c in (ids, t, h, w, ordinal)]
    with torch.no_grad():
        return neo(*cols, pixel_values=pixels, backend="sdpa").logits[0]


def _neo_answer(neo, turns, images, max_new_tokens=GEN["max_new_tokens"]) -> tuple[list, str]:
    ids, _, pixels = _neo_inputs(neo, turns, images)
    new = generate(neo, [Prompt(ids, pixels)], SamplingParams(max_new_tokens=max_new_tokens))[0]
    return new, load_tokenizer().decode(new, skip_special_tokens=True).strip()


def test_the_export_is_a_complete_hf_folder_in_the_released_layout(export_dir, neo):
    names = {p.name for p in export_dir.iterdir()}
    assert (
        set(REMOTE_CODE) | {"config.json", "model.safetensors", "generation_config.json"} <= names
    )
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    assert {"special_tokens_map.json", "preprocessor_config.json"} <= names
    config = json.loads((export_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert NeoConfig.from_released(config) == neo.config  # the released layout, unchanged
    # the remote code imports only torch, transformers, their dependencies and its siblings
    allowed = {"__future__", "copy", "math", "typing", "numpy", "PIL", "torch", "transformers"}
    for name in REMOTE_CODE:
        tree = ast.parse((export_dir / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}  # fmt: skip
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 0
        }  # fmt: skip
        assert imported <= allowed, (name, imported - allowed)


def test_auto_model_gives_neo_models_logits_on_an_image_and_text_prompt(
    hf_model, neo, images, processor, export_dir
):
    from transformers import AutoModelForCausalLM

    turns = [("system", "Be brief."), ("user", user_content("Compare the two pictures.", 2))]
    ids, grids, pixels = _neo_inputs(neo, turns, images)
    assert grids[1] != (images[1].height // 32, images[1].width // 32)  # resized to the budget
    feats = processor(images)
    with torch.no_grad():
        ours = hf_model(
            torch.as_tensor(ids, dtype=torch.long)[None],
            pixel_values=feats["pixel_values"],
            grid_hw=feats["grid_hw"],
        ).logits[0]
    reference = _neo_logits(neo, ids, grids, pixels)
    assert (ours - reference).abs().max().item() <= TOL
    assert reference.std() > 0.1  # logits that carry information
    causal = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)
    assert type(causal).__name__ == "NEOChatModel"


def test_generate_gives_neo_models_greedy_tokens_and_step_logits(hf_model, neo, images, processor):
    turns = [("user", user_content("Describe the picture.", 1))]
    ids, grids, pixels = _neo_inputs(neo, turns, images[:1])
    expected, _ = _neo_answer(neo, turns, images[:1])
    feats = processor(images[:1])
    out = hf_model.generate(
        pixel_values=feats["pixel_values"],
        input_ids=torch.as_tensor(ids, dtype=torch.long)[None],
        grid_hw=feats["grid_hw"],
        eos_token_id=IM_END_ID,
        output_logits=True,
        return_dict_in_generate=True,
        **GEN,
    )
    tokens = out.sequences[0].tolist()
    assert [t for t in tokens if t != IM_END_ID] == expected
    # every step's logits equal neo_model's on the whole sequence: generated tokens continue
    # T after the prompt's largest T, with H = W = 0
    full = np.concatenate([ids, tokens[:-1]])
    t, h, w, ordinal = thw_indices(np.asarray(ids), grids)
    tail = len(tokens) - 1
    cols = [
        np.concatenate([c, fill]) for c, fill in (
            (full[: len(ids)], full[len(ids):]),
            (t, next_t(t) + np.arange(tail)),
            (h, np.zeros(tail, np.int64)), (w, np.zeros(tail, np.int64)),
            (ordinal, -np.ones(tail, np.int64)),
        )
    ]  # fmt: skip
    with torch.no_grad():
        reference = neo(
            *[torch.as_tensor(c.astype(np.int64))[None] for c in cols],
            pixel_values=pixels,
            backend="sdpa",
        ).logits[0, len(ids) - 1 :]
    steps = torch.cat(out.logits)
    assert steps.shape == reference.shape
    assert (steps - reference).abs().max().item() <= TOL


def test_chat_answers_like_neo_chat_over_a_conversation_with_history(
    hf_model, hf_tokenizer, neo, images, processor
):
    first = processor(images[:1])
    answer, history = hf_model.chat(
        hf_tokenizer, first["pixel_values"], "What is this?", dict(GEN), return_history=True,
        grid_hw=first["grid_hw"],
    )  # fmt: skip
    turns = [("user", user_content("What is this?", 1))]
    assert answer == _neo_answer(neo, turns, images[:1])[1]
    assert history == [("<image>\nWhat is this?", answer)]

    # a second question with a second image: pixel_values / grid_hw hold every image so far
    both = processor(images)
    second, history = hf_model.chat(
        hf_tokenizer, both["pixel_values"], "<image>\nAnd this one?", dict(GEN),
        history=history, return_history=True, grid_hw=both["grid_hw"],
    )  # fmt: skip
    turns += [("assistant", answer), ("user", "<image>\nAnd this one?")]
    assert second == _neo_answer(neo, turns, images)[1]
    assert len(history) == 2 and history[1] == ("<image>\nAnd this one?", second)

    # text only (no pixel_values, no grid_hw), with a system message as VLMEvalKit sets it
    hf_model.system_message = "You answer in French."
    try:
        text = hf_model.chat(hf_tokenizer, None, "Hello?", dict(GEN))
    finally:
        hf_model.system_message = ""
    assert (
        text == _neo_answer(neo, [("system", "You answer in French."), ("user", "Hello?")], [])[1]
    )

    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        hf_model.chat(hf_tokenizer, both["pixel_values"], "?", dict(GEN), grid_hw=both["grid_hw"])


def test_vlmevalkits_bf16_load_chats(export_dir, hf_tokenizer, images, processor):
    """``AutoModel.from_pretrained(path, torch_dtype=torch.bfloat16, trust_remote_code=True)``,
    then chat with bf16 pixel values, as VLMEvalKit's wrapper does."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        export_dir, torch_dtype=torch.bfloat16, trust_remote_code=True
    ).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    feats = processor(images[:1])
    config = {"do_sample": False, "max_new_tokens": 3, "top_p": None}
    answer = model.chat(
        hf_tokenizer, feats["pixel_values"].to(torch.bfloat16), "What is this?", config,
        grid_hw=feats["grid_hw"],
    )  # fmt: skip
    assert isinstance(answer, str) and answer
    assert config == {"do_sample": False, "max_new_tokens": 3, "top_p": None}  # not mutated


def test_the_checkpoints_generation_config_never_emits_image_tokens(hf_model, export_dir):
    assert hf_model.generation_config.eos_token_id == IM_END_ID
    assert hf_model.generation_config.suppress_tokens == [IMG_CONTEXT_ID]
    assert hf_model.generation_config.do_sample is False


def test_the_image_processor_is_neos_preprocessing_in_the_released_patch_layout(
    processor, neo, images
):
    assert (processor.min_pixels, processor.max_pixels) == (
        neo.config.min_pixels, neo.config.max_pixels,
    )  # fmt: skip
    _, grids, pixels = _neo_inputs(neo, [("user", user_content("x", 2))], images)
    feats = processor(images)
    assert feats["grid_hw"].tolist() == [[2 * r, 2 * c] for r, c in grids]  # 16-px units
    start = 0
    for (rows, cols), image in zip(feats["grid_hw"].tolist(), pixels, strict=True):
        patches = feats["pixel_values"][start : start + rows * cols]
        start += rows * cols
        # [rows*cols, 3*16*16], row-major patches, each flattened channel-major
        whole = patches.view(rows, cols, 3, 16, 16).permute(2, 0, 3, 1, 4).reshape(image.shape)
        assert torch.equal(whole, image)
    assert start == feats["pixel_values"].shape[0]
    # the budget can be overridden per call, as VLMEvalKit does for OCRBench
    small = processor(images[1], max_pixels=64 * 64)["grid_hw"]
    assert int(small.prod()) * 256 <= 64 * 64


def test_auto_processor_expands_image_placeholders_like_neos_template(export_dir, neo, images):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(export_dir, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=text, images=[images[0]])
    ids, _, _ = _neo_inputs(neo, [("user", user_content("Hi", 1))], images[:1])
    assert inputs["input_ids"][0].tolist() == ids.tolist()
    assert inputs["grid_hw"].shape == (1, 2)


STANDALONE = """
import importlib.abc, json, sys

class NoNeo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("neo_model", "neo_data", "pipelines", "neo_manifests"):
            raise ImportError(f"{name} must not be imported by the remote code")

sys.meta_path.insert(0, NoNeo())
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

path, image = sys.argv[1], Image.open(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
model = AutoModel.from_pretrained(path, torch_dtype=torch.float32, trust_remote_code=True).eval()
feats = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)(image)
answer = model.chat(tok, feats["pixel_values"], "What is this?", dict(max_new_tokens=8,
    do_sample=False), grid_hw=feats["grid_hw"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("neo_model", "neo_data"))
print(json.dumps({"answer": answer, "neo_modules": loaded}))
"""


@pytest.mark.slow
def test_the_remote_code_runs_where_neo_cannot_be_imported(export_dir, neo, images, tmp_path):
    """A fresh interpreter, isolated (-I: no PYTHONPATH, no cwd on sys.path) in another
    directory, with every neo package blocked from import: the VLMEvalKit calls still work."""
    picture = tmp_path / "picture.png"
    images[0].save(picture)
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(STANDALONE), str(export_dir), str(picture)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["neo_modules"] == []
    turns = [("user", user_content("What is this?", 1))]
    assert result["answer"] == _neo_answer(neo, turns, images[:1], max_new_tokens=8)[1]
