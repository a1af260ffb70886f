"""The recaption job on Ray Data: every row comes out, new captions carry their provenance, a
corrupt image is recorded on its row, policies pack as they say through the packer's own
caption choice, reruns resume, a crashed actor is replaced and its batch retried."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neo_data.encoding.encode import EncodeSettings, SampleEncoder, stable_unit_float
from neo_data.encoding.images import ImageEncoding
from neo_data.encoding.tokens import load_tokenizer, user_content
from neo_data.format.schema import CURATED_SCHEMA, REJECTED_SCHEMA, check_schema
from neo_data.format.storage import OutputConflict
from neo_data.manifest import Manifest, load_manifest
from neo_data.manifest.recaption import RecaptionSpec, check_policy
from neo_data.recaption.job import CRASH_ONCE_ENV, plan_inputs, run_recaption
from neo_data.recaption.output import apply_policy, provenance
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.prompting import build_prompt
from neo_model.testing import save_random_llava, save_random_neo
from neo_model.weights import load_for_inference
from tests.helpers import REPO, caption_row, conversation_row, text_row, write_curated

PROMPT = "Write a caption."
STEPS = 4


def picture(i: int) -> bytes:
    img = Image.effect_mandelbrot((60 + 7 * i, 50), (-2, -1, 1, 1), 20 + i).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def neo_dir(tmp_path_factory) -> Path:
    return save_random_neo(tmp_path_factory.mktemp("neo") / "neo-debug")


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """Two input files: 7 caption rows (row 3 corrupt) + a conversation + a text, and 4 caption
    rows of another source."""
    root = tmp_path_factory.mktemp("curated")
    a = [caption_row(i, f"original {i}", [picture(i)]) for i in range(7)]
    a[3] = caption_row(3, "original 3", [b"\xff\xd8 corrupt"])
    a += [
        conversation_row(7, [("user", "<image>\nHi"), ("assistant", "Hello")], [picture(7)]),
        text_row(8, "a document"),
    ]
    write_curated(str(root / "part-a.parquet"), a, row_group_size=4)
    b = [caption_row(i, f"web {i}", [picture(10 + i)], source="web") for i in range(4)]
    write_curated(str(root / "part-b.parquet"), b)
    return root


def manifest(curated: Path, out: Path, model: Path, **recaption) -> Manifest:
    pack = recaption.pop("pack", {})
    spec = {
        "input": [str(curated)],
        "output": str(out),
        "backend": "neo",
        "model": str(model),
        "prompt": PROMPT,
        "generation": {"max_new_tokens": STEPS},
        "num_gpus": 0,
        "num_cpus": 0.5,
        "batch_size": 3,
        "pool_size": 1,
        **recaption,
    }
    data = {"curated": [str(curated)], "packed": str(out / "packed")}
    return Manifest.model_validate({"name": "t", "data": data, "recaption": spec, "pack": pack})


def read_out(out: Path, name: str) -> list[dict]:
    table = pq.read_table(out / "samples" / name)
    check_schema(table.schema, CURATED_SCHEMA, name)  # raises on any difference
    assert table.schema.metadata == CURATED_SCHEMA.metadata
    return table.to_pylist()


def expected_caption(neo_dir: Path, data: bytes) -> str:
    """The peer: ``neo chat``'s prompt path and generate on the same image."""
    model, _ = load_for_inference(str(neo_dir), "cpu")
    tok = load_tokenizer()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    cfg = model.config
    ids, _, px = build_prompt(
        tok, [("user", user_content(PROMPT, 1))], [img], cfg.min_pixels, cfg.max_pixels
    )
    new = generate(model, [Prompt(ids, px)], SamplingParams(max_new_tokens=STEPS))[0]
    return tok.decode(new, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def keep_both_run(ray_local, curated, neo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "recaptioned"
    m = manifest(curated, out, neo_dir)
    return m, out, run_recaption(m)


def test_every_row_comes_out_with_provenance(keep_both_run, curated, neo_dir):
    m, out, result = keep_both_run
    rows_a = read_out(out, "part-a.parquet")
    inputs = pq.read_table(curated / "part-a.parquet").to_pylist()
    assert [r["sample_id"] for r in rows_a] == [r["sample_id"] for r in inputs]
    for got, src in zip(rows_a, inputs, strict=True):
        assert got["images"] == src["images"] and got["conversation"] == src["conversation"]
    for i in (0, 1, 2, 4, 5, 6):
        caps = rows_a[i]["captions"]
        assert caps[0] == inputs[i]["captions"][0] and len(caps) == 2  # original first, kept
        prov = caps[1]["provenance"]
        assert prov["origin"] == "recaption" and prov["backend"] == "neo"
        assert prov["model"] == str(neo_dir) and prov["prompt_template"] == PROMPT
        assert prov["prompt_sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()
        gen = json.loads(prov["generation"])
        assert gen["max_new_tokens"] == STEPS and gen["temperature"] == 0.0
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(prov["created_at"])
        assert dt.timedelta(0) <= age < dt.timedelta(hours=1)
    assert rows_a[0]["captions"][1]["text"] == expected_caption(neo_dir, picture(0))
    # the corrupt row, the conversation and the document are unchanged
    for i in (3, 7, 8):
        assert rows_a[i] == inputs[i]

    failures = pq.read_table(out / "failures" / "part-a.parquet")
    assert failures.schema.remove_metadata().equals(REJECTED_SCHEMA)
    assert failures.to_pylist() == [
        {"sample_id": "test-000003", "source": "test", "url": inputs[3]["url"], "row": 3,
         "input_file": str(curated / "part-a.parquet"), "input_row": 3,
         "reason": "image_decode_error", "detail": failures.column("detail")[0].as_py()}
    ]  # fmt: skip
    assert not (out / "failures" / "part-b.parquet").exists()

    totals = result.report["totals"]
    assert totals == {
        "rows": 13,
        "recaptioned": 10,
        "failed": {"image_decode_error": 1},
        "skipped": {"kind_not_caption": 2},
    }
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["totals"] == totals and on_disk["provenance"]["backend"] == "neo"
    assert len(read_out(out, "part-b.parquet")) == 4


def test_rerun_resumes_and_a_changed_spec_is_refused(keep_both_run, curated, neo_dir):
    m, out, _ = keep_both_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    again = run_recaption(m)
    assert again.files_skipped == 2
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()} == before
    assert again.report["totals"] == keep_both_run[2].report["totals"]
    other = manifest(curated, out, neo_dir, prompt="Another prompt.")
    with pytest.raises(OutputConflict, match="other settings"):
        run_recaption(other)


def test_resume_redoes_only_a_file_without_marker(ray_local, curated, neo_dir, tmp_path):
    out = tmp_path / "rc"
    m = manifest(curated, out, neo_dir, sources=["web"])
    first = run_recaption(m)
    assert first.report["totals"]["skipped"] == {"kind_not_caption": 2, "source_not_selected": 7}
    (out / "_work" / "part-a.parquet.json").unlink()  # as if the job died after part-b
    b_mtime = (out / "samples" / "part-b.parquet").stat().st_mtime_ns
    second = run_recaption(m)
    assert second.files_skipped == 1
    assert (out / "samples" / "part-b.parquet").stat().st_mtime_ns == b_mtime
    assert second.report["totals"] == first.report["totals"]


def test_a_crashed_actor_is_replaced_and_its_batch_retried(
    ray_local, curated, neo_dir, tmp_path, monkeypatch
):
    marker = tmp_path / "crashed-once"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    out = tmp_path / "rc"
    result = run_recaption(manifest(curated, out, neo_dir))
    assert marker.exists()  # an actor process did die (os._exit) on its first batch
    assert result.report["totals"]["rows"] == 13
    assert result.report["totals"]["recaptioned"] == 10
    rows = read_out(out, "part-a.parquet") + read_out(out, "part-b.parquet")
    assert len({r["sample_id"] for r in rows}) == 13


def test_transformers_backend_replace_policy(ray_local, curated, tmp_path):
    llava = save_random_llava(tmp_path / "llava")
    out = tmp_path / "rc"
    m = manifest(curated, out, llava, backend="transformers", policy="replace", sources=["web"])
    result = run_recaption(m)
    assert result.report["totals"]["recaptioned"] == 4
    rows = read_out(out, "part-b.parquet")
    enc = SampleEncoder(load_tokenizer(), settings("first"))
    for r in rows:
        assert [c["provenance"]["origin"] for c in r["captions"]] == ["recaption", "original"]
        assert r["captions"][0]["provenance"]["backend"] == "transformers"
        assert enc.choose_caption(r) == r["captions"][0]["text"]  # replace: packed = new


# ---------------------------------------------------------------------------------------------
# Policies against the packer's caption choice (pure: no Ray)
# ---------------------------------------------------------------------------------------------


def settings(choice: str, ratio: float = 0.5, seed: int = 0) -> EncodeSettings:
    return EncodeSettings(
        seq_len=4096, max_image_tokens=4096, min_pixels=32 * 32, max_pixels=256 * 256,
        max_decode_pixels=10**8, encoding=ImageEncoding("jpeg", 95, "4:4:4"),
        caption_choice=choice, recaption_ratio=ratio, seed=seed,
    )  # fmt: skip


def recaptioned_rows(n: int, policy: str, spec: RecaptionSpec) -> list[dict]:
    rows = []
    for i in range(n):
        row = caption_row(i, f"orig {i}", [])
        new = {"text": f"new {i}", "provenance": {**provenance(spec), "created_at": "now"}}
        row["captions"] = apply_policy(row["captions"], new, policy)
        rows.append(row)
    return rows


@pytest.fixture()
def spec(tmp_path) -> RecaptionSpec:
    return RecaptionSpec(input=["x"], output=str(tmp_path), backend="neo", model="m")


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.75])
def test_mix_ratio_holds_through_the_packer(spec, ratio):
    rows = recaptioned_rows(4000, "mix", spec)
    enc = SampleEncoder(None, settings("mix", ratio, seed=7))
    picked = [enc.choose_caption(r) for r in rows]
    share = sum(p.startswith("new") for p in picked) / len(rows)
    assert abs(share - ratio) < 0.03  # 4000 draws: 3 sigma is about 0.02
    # per row, the packer's seeded draw decides (deterministic, reproducible)
    for r, p in zip(rows[:50], picked[:50], strict=True):
        want_new = stable_unit_float(7, r["sample_id"]) < ratio
        assert p.startswith("new") == want_new


def test_keep_both_and_replace_pack_what_they_say(spec):
    keep = recaptioned_rows(20, "keep_both", spec)
    repl = recaptioned_rows(20, "replace", spec)
    for choice, rows, prefix in [
        ("first", keep, "orig"), ("original", keep, "orig"), ("recaption", keep, "new"),
        ("first", repl, "new"), ("recaption", repl, "new"),
    ]:  # fmt: skip
        enc = SampleEncoder(None, settings(choice))
        assert all(enc.choose_caption(r).startswith(prefix) for r in rows), (choice, prefix)


def test_replace_twice_keeps_one_recaption_and_the_original(spec):
    row = recaptioned_rows(1, "replace", spec)[0]
    newer = {"text": "newer", "provenance": {"origin": "recaption"}}
    caps = apply_policy(row["captions"], newer, "replace")
    assert [c["text"] for c in caps] == ["newer", "orig 0"]
    enc = SampleEncoder(None, settings("recaption"))
    assert enc.choose_caption({**row, "captions": caps}) == "newer"


def test_policy_and_caption_choice_must_agree(spec):
    check_policy(spec, "original")  # keep_both: any choice
    mix = spec.model_copy(update={"policy": "mix"})
    with pytest.raises(ValueError, match="pack.caption_choice mix"):
        check_policy(mix, "first")
    check_policy(mix, "mix")
    with pytest.raises(ValueError, match="first or recaption"):
        check_policy(spec.model_copy(update={"policy": "replace"}), "original")


def test_mix_job_refuses_a_manifest_that_would_not_mix(ray_local, curated, neo_dir, tmp_path):
    m = manifest(curated, tmp_path / "o", neo_dir, policy="mix")
    with pytest.raises(ValueError, match="caption_choice"):
        run_recaption(m)
    assert not (tmp_path / "o").exists()  # refused before writing anything


# ---------------------------------------------------------------------------------------------
# The manifest section
# ---------------------------------------------------------------------------------------------


def test_example_manifest_validates():
    m = load_manifest(REPO / "manifests" / "recaption_example.yaml")
    assert m.recaption is not None and m.recaption.backend in ("transformers", "neo", "openai")
    check_policy(m.recaption, m.pack.caption_choice)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"backend": "openai"}, "needs an `openai:` section"),
        ({"backend": "neo", "openai": {"endpoint": "http://x/v1"}}, "backend is neo"),
        ({"backend": "openai", "openai": {"endpoint": "x"}}, "endpoint"),
        ({"backend": "openai", "openai": {"endpoint": "http://x", "api_key_env": "sk-123"}},
         "api_key_env"),
        ({"backend": "neo", "batch_size": 0}, "batch_size"),
        ({"backend": "neo", "policy": "both"}, "policy"),
        ({"backend": "neo", "promt": "typo"}, "promt"),
    ],
)  # fmt: skip
def test_bad_sections_name_the_field(section, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words):
        RecaptionSpec.model_validate({"input": "a/", "output": "o", "model": "m", **section})


def test_input_as_one_string_and_gpu_defaults():
    s = RecaptionSpec(input="a/", output="o", backend="neo", model="m")
    assert s.input == ["a/"] and s.gpus_per_actor == 1.0
    o = RecaptionSpec(
        input="a/", output="o", backend="openai", model="m", openai={"endpoint": "http://x/v1"}
    )
    assert o.gpus_per_actor == 0.0


def test_s3_input_and_output(ray_local, s3_bucket, curated, neo_dir):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    fs.put(str(curated / "part-b.parquet"), f"{s3_bucket[5:]}/curated/part-b.parquet")
    m = manifest(Path("unused"), Path("unused"), neo_dir)
    spec = m.recaption.model_copy(
        update={"input": [f"{s3_bucket}/curated/"], "output": f"{s3_bucket}/out"}
    )
    result = run_recaption(m.model_copy(update={"recaption": spec}))
    assert result.report["totals"]["recaptioned"] == 4
    with fs.open(f"{s3_bucket[5:]}/out/samples/part-b.parquet", "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert [c["provenance"]["origin"] for c in rows[0]["captions"]] == ["original", "recaption"]
    assert fs.exists(f"{s3_bucket[5:]}/out/report.json")


def test_same_file_names_in_two_folders_get_distinct_outputs(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        write_curated(str(tmp_path / folder / "part.parquet"), [caption_row(0, "a", [])])
    files = plan_inputs([str(tmp_path / "x"), str(tmp_path / "y")])
    names = [f.name for f in files]
    assert names[0] == "part.parquet" and names[1].startswith("part-") and len(set(names)) == 2


def test_an_empty_input_file_comes_out_empty(ray_local, tmp_path):
    write_curated(str(tmp_path / "empty.parquet"), [])
    m = manifest(tmp_path / "empty.parquet", tmp_path / "out", tmp_path / "never-loaded")
    result = run_recaption(m)
    assert result.report["totals"]["rows"] == 0
    assert pq.read_table(tmp_path / "out" / "samples" / "empty.parquet").num_rows == 0


def test_a_changed_or_shifted_input_is_refused_not_skipped(ray_local, tmp_path):
    """Markers are found by output name: a file rewritten under its name, or a new folder
    listed first (which takes the name), must not reuse the old marker for other rows."""
    (tmp_path / "y").mkdir()
    write_curated(str(tmp_path / "y" / "part.parquet"), [])
    out = tmp_path / "out"
    run_recaption(manifest(tmp_path / "y", out, tmp_path / "never-loaded"))
    (out / "report.json").unlink()  # as if killed before the report
    (tmp_path / "x").mkdir()
    write_curated(str(tmp_path / "x" / "part.parquet"), [caption_row(0, "a", [picture(0)])])
    m = manifest(tmp_path / "x", out, tmp_path / "never-loaded")
    both = m.recaption.model_copy(update={"input": [str(tmp_path / "x"), str(tmp_path / "y")]})
    shifted = m.model_copy(update={"recaption": both})
    with pytest.raises(OutputConflict, match=r"x/part\.parquet \(1 rows"):
        run_recaption(shifted)
    write_curated(str(tmp_path / "y" / "part.parquet"), [caption_row(0, "a", [picture(0)])])
    with pytest.raises(OutputConflict, match="the inputs changed"):
        run_recaption(manifest(tmp_path / "y", out, tmp_path / "never-loaded"))


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        ("delete", r"samples/part-b.parquet \(input .*part-b.parquet\) is missing"),
        ("truncate", r"samples/part-b.parquet .* holds 3 rows for 4 input rows; missing row 3 "),
        ("repeat", r"holds 5 rows for 4 input rows; extra or repeated row 0 \(web-000000\)"),
        ("lose failures", r"row 3 \(test-000003\) neither carry .* nor are listed in failures"),
        ("stray", r"samples holds files of no input of this run: \['part-c.parquet'\]"),
    ],
)
def test_a_rerun_recounts_the_outputs_and_refuses_what_they_lack(keep_both_run, tamper, error):
    """The markers all say done; the outputs are counted again and a damaged one is named (the
    marker is not trusted), while a killed run's temporary file is swept away."""
    m, out, _ = keep_both_run
    b, failures = out / "samples" / "part-b.parquet", out / "failures" / "part-a.parquet"
    saved = {p: p.read_bytes() for p in (b, failures)}
    table = pq.read_table(b)
    try:
        if tamper == "delete":
            b.unlink()
        elif tamper == "truncate":
            pq.write_table(table.slice(0, 3), b)
        elif tamper == "repeat":
            pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), b)
        elif tamper == "lose failures":
            failures.unlink()
        else:
            pq.write_table(table, out / "samples" / "part-c.parquet")
        with pytest.raises(OutputConflict, match=error) as e:
            run_recaption(m)
        if tamper != "stray":
            assert "delete _work/" in str(e.value)  # how to redo the file
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
        (out / "samples" / "part-c.parquet").unlink(missing_ok=True)
    leftover = out / "samples" / f"part-b.parquet.tmp-{'0' * 32}"
    leftover.write_bytes(b"half a file")
    assert run_recaption(m).report["totals"]["rows"] == 13  # intact again: verifies
    assert not leftover.exists()
