"""``neo chat``: answers equal direct generation, multi-turn history, clear errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from neo_data.encoding.tokens import load_tokenizer, render_turns
from neo_model.config import debug
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.model import NeoChatModel, normalize_image
from neo_model.weights import save_pretrained
from pipelines import chat, cli
from tests.helpers import image_bytes

STEPS = 6


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, NeoChatModel]:
    torch.manual_seed(0)
    model = NeoChatModel(debug()).eval()
    path = tmp_path_factory.mktemp("neo-debug")
    save_pretrained(model, path)
    return path, model


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """100 x 70 px: smart resize (debug budget 32^2 .. 256^2) makes it 96 x 64, a 2x3 grid."""
    path = tmp_path_factory.mktemp("img") / "picture.png"
    img = Image.effect_mandelbrot((100, 70), (-2, -1, 1, 1), 60).convert("RGB")
    img.save(path)
    return path


def expected_prompt(tok, turns, picture: Path) -> Prompt:
    """The prompt built here from first principles: bicubic to 96x64, normalise, render."""
    resized = Image.open(picture).convert("RGB").resize((96, 64), Image.Resampling.BICUBIC)
    rendered = render_turns(tok, turns, [(2, 3)], add_generation_prompt=True)
    return Prompt(rendered.input_ids, [normalize_image(resized)])


def greedy_answer(model, tok, prompt: Prompt) -> str:
    new = generate(model, [prompt], SamplingParams(max_new_tokens=STEPS))[0]
    return tok.decode(new, skip_special_tokens=True).strip()


@pytest.fixture()
def spy(monkeypatch) -> list[tuple[Prompt, list[int]]]:
    """Record every prompt chat hands to generate(), and what came back."""
    calls = []

    def recording(model, prompts, params=None):
        out = generate(model, prompts, params)
        calls.append((prompts[0], out[0]))
        return out

    monkeypatch.setattr(chat, "generate", recording)
    return calls


def test_one_question_prints_what_generate_gives(checkpoint, picture, tok, capsys, spy):
    path, model = checkpoint
    argv = ["chat", "--checkpoint", str(path), "--image", str(picture)]
    assert cli.main([*argv, "--max-new-tokens", str(STEPS), "What is this?"]) == 0
    out = capsys.readouterr().out

    prompt = expected_prompt(tok, [("user", "<image>\nWhat is this?")], picture)
    answer = greedy_answer(model, tok, prompt)
    assert answer
    assert out == answer + "\n"
    ((sent, _),) = spy
    assert list(sent.input_ids) == list(prompt.input_ids)
    assert torch.equal(sent.images[0], prompt.images[0])


def test_conversation_keeps_history(checkpoint, picture, tok, capsys, spy, monkeypatch):
    path, model = checkpoint
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is this?\nAnd the colour?\n"))
    argv = ["--checkpoint", str(path), "--image", str(picture), "--max-new-tokens", str(STEPS)]
    assert chat.main(argv) == 0
    out = capsys.readouterr().out

    assert len(spy) == 2
    first = tok.decode(spy[0][1], skip_special_tokens=True).strip()
    second = tok.decode(spy[1][1], skip_special_tokens=True).strip()
    assert first == greedy_answer(model, tok, spy[0][0])
    assert out == (
        f"you> What is this?\nneo> {first}\nyou> And the colour?\nneo> {second}\nyou> \n"
    )
    turns = [("user", "<image>\nWhat is this?"), ("assistant", first), ("user", "And the colour?")]
    want = expected_prompt(tok, turns, picture)
    ids = spy[1][0].input_ids
    assert list(ids) == list(want.input_ids)
    assert first in tok.decode(ids)
    assert len(spy[1][0].images) == 1


def test_image_command_and_reset(checkpoint, picture, tok, capsys, spy, monkeypatch):
    path, _ = checkpoint
    script = f"Hi.\n/image {picture}\nLook.\n/reset\nAgain.\n/exit\nnever asked\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert chat.main(["--checkpoint", str(path), "--max-new-tokens", "2"]) == 0
    assert [len(p.images) for p, _ in spy] == [0, 1, 0]
    first = tok.decode(spy[0][1], skip_special_tokens=True).strip()
    turns = [("user", "Hi."), ("assistant", first), ("user", "<image>\nLook.")]
    assert list(spy[1][0].input_ids) == list(expected_prompt(tok, turns, picture).input_ids)
    again = render_turns(tok, [("user", "Again.")], [], add_generation_prompt=True)
    assert list(spy[2][0].input_ids) == list(again.input_ids)
    assert capsys.readouterr().out.count("neo> ") == 3


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert chat.main(["--checkpoint", str(missing), "Hi"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert chat.main(["--checkpoint", str(tmp_path), "Hi"]) == 2
    err = capsys.readouterr().err
    assert "not a NEO checkpoint" in err and str(tmp_path) in err


def test_corrupt_image_is_named(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(image_bytes(40, 40)[:30])
    assert chat.main(["--checkpoint", str(checkpoint[0]), "--image", str(bad), "Hi"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "decode" in err


def test_extreme_aspect_ratio_is_rejected(checkpoint, tmp_path, capsys):
    thin = tmp_path / "thin.png"
    thin.write_bytes(image_bytes(300, 1))
    assert chat.main(["--checkpoint", str(checkpoint[0]), "--image", str(thin), "Hi"]) == 2
    err = capsys.readouterr().err
    assert str(thin) in err and "aspect ratio" in err


def test_budget_defaults_to_released_eval_without_checkpoint_pixels(
    checkpoint, picture, tmp_path, spy
):
    """A config.json without vision_config min/max_pixels: 1,280 .. 4,096 image tokens."""
    path, _ = checkpoint
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((path / "config.json").read_text())
    del config["vision_config"]["min_pixels"], config["vision_config"]["max_pixels"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = ["--checkpoint", str(tmp_path), "--image", str(picture), "--max-new-tokens", "1", "?"]
    assert chat.main(argv) == 0
    ((prompt, _),) = spy
    _, height, width = prompt.images[0].shape
    assert 1280 <= (height // 32) * (width // 32) <= 4096
