"""The pack job end to end on a local Ray: round trip, counts, determinism, resume, S3."""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neo_data.encoding.encode import SampleEncoder
from neo_data.encoding.tokens import IGNORE_INDEX, IMG_CONTEXT_ID, load_tokenizer
from neo_data.format.schema import PACKED_SCHEMA, check_schema
from neo_data.format.shards import PackedDataset
from neo_data.format.storage import OutputConflict
from neo_data.manifest import parse_manifest
from neo_data.pack.job import encode_settings, run_pack
from neo_data.pack.report import verify_report
from tests.helpers import caption_row, conversation_row, image_bytes, text_row, write_curated

pytestmark = pytest.mark.slow

BAD = {
    "corrupt": "image_decode_error",
    "empty_bytes": "image_empty",
    "extreme_aspect": "aspect_ratio_too_extreme",
    "blank_caption": "empty_caption",
    "too_long": "too_long_for_budget",
    "no_images_field": "missing_field",
}


def curated_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(70):
        w, h = rng.randint(40, 700), rng.randint(40, 700)
        words = " ".join(
            rng.choice(["red", "blue", "circle", "square", "left", "two"])
            for _ in range(rng.randint(3, 40))
        )
        rows.append(
            caption_row(
                i,
                words,
                [image_bytes(w, h, rng.choice(["PNG", "JPEG", "WEBP"]), (i * 3 % 255, 90, 20))],
            )
        )
    for i in range(20):
        imgs = [
            image_bytes(rng.randint(64, 300), rng.randint(64, 300))
            for _ in range(rng.randint(0, 2))
        ]
        q = " ".join(["<image>"] * len(imgs)) + " What is shown?"
        rows.append(
            conversation_row(
                i,
                [
                    ("user", q),
                    ("assistant", f"Answer {i}."),
                    ("user", "Sure?"),
                    ("assistant", "Yes."),
                ],
                imgs,
            )
        )
    for i in range(40):
        rows.append(text_row(i, "Counting story. " * rng.randint(2, 80)))
    bad = {
        "corrupt": caption_row(900, "x", [b"\xff\xd8\xff garbage"]),
        "empty_bytes": caption_row(901, "x", [b""]),
        "extreme_aspect": caption_row(902, "x", [image_bytes(2100, 10)]),
        "blank_caption": caption_row(903, "  ", [image_bytes(64, 64)]),
        "too_long": caption_row(904, "word " * 3000, [image_bytes(64, 64)]),
        "no_images_field": {**caption_row(905, "x", [image_bytes(64, 64)]), "images": None},
    }
    rows.extend(bad.values())
    rng.shuffle(rows)
    return rows


MANIFEST = """
name: test
stage: pretrain
data:
  curated: [{curated}]
  packed: {packed}
pack:
  seq_len: 2048
  min_pixels: 4096
  max_pixels: 262144
  buckets:
    - {{name: low, max_image_tokens: 64}}
    - {{name: high, max_image_tokens: 256}}
  text_ratio: 0.25
  packs_per_shard: 4
  window_samples: 60
"""


def manifest_for(curated: str, packed: str, overrides: dict | None = None):
    return parse_manifest(MANIFEST.format(curated=curated, packed=packed), "test.yaml", overrides)


@pytest.fixture(scope="module")
def curated_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("curated")
    rows = curated_rows()
    write_curated(str(d / "part-0.parquet"), rows[:80], row_group_size=32)
    write_curated(str(d / "part-1.parquet"), rows[80:], row_group_size=32)
    return d


@pytest.fixture(scope="module")
def packed(ray_local, curated_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "ds"
    result = run_pack(manifest_for(str(curated_dir), str(out)))
    return result


def test_every_input_row_is_packed_or_dropped_with_its_reason(packed, curated_dir):
    t = packed.index["totals"]
    assert t["samples_in"] == 136
    verify_report(packed.index)
    for reason in BAD.values():
        assert t["dropped"].get(reason, 0) >= 1, reason
    rejected = pq.read_table(f"{packed.output}/rejected").to_pylist()
    assert len(rejected) == sum(t["dropped"].values())
    by_id = {r["sample_id"]: r["reason"] for r in rejected}
    for i, reason in zip(range(900, 906), BAD.values(), strict=True):
        assert by_id[f"test-{i:06d}"] == reason
    # the rejected row points back at its input file and row
    some = next(r for r in rejected if r["reason"] == "image_decode_error")
    src = pq.read_table(some["input_file"]).slice(some["input_row"], 1).to_pylist()[0]
    assert src["sample_id"] == some["sample_id"]


def test_text_ratio_is_the_manifests(packed, curated_dir):
    """The quota is decided over the whole input: text / (text + multimodal input rows) is
    0.25 exactly (within one sample), whatever the windows."""
    t = packed.index["totals"]
    flags = pq.read_table(str(curated_dir), columns=["text_only"])["text_only"].to_pylist()
    mm_in = flags.count(False)
    assert t["text_samples"] == round(0.25 / 0.75 * mm_in)
    assert t["dropped"]["text_over_ratio"] == flags.count(True) - t["text_samples"]


def test_shards_are_bucketed_and_budgets_hold(packed):
    ds = PackedDataset(packed.output)
    assert ds.buckets == ["low", "high"]
    assert ds.verify() == []
    bounds = {"low": 64, "high": 256}
    for i, shard in enumerate(ds.shards):
        table = ds.read_shard(i)
        check_schema(table.schema, PACKED_SCHEMA, shard["path"])
        assert table.num_rows == shard["packs"] <= 4
        for pack in table.to_pylist():
            assert pack["bucket"] == shard["bucket"]
            assert pack["num_tokens"] <= 2048
            for h, w in zip(pack["image_heights"], pack["image_widths"], strict=True):
                assert (h // 32) * (w // 32) <= bounds[shard["bucket"]]
            cu = pack["cu_seqlens"]
            assert all(pack["labels"][e - 1] == IGNORE_INDEX for e in cu[1:])
            assert all(pack["t_index"][s] == 0 for s in cu[:-1])


# The test manifest with a per-pack image budget of 200 tokens and images of at most 64 tokens.
BUDGET = {
    "pack.max_image_tokens": 200,
    "pack.max_pixels": 65536,
    "pack.buckets": [{"name": "all", "max_image_tokens": 64}],
}


def test_the_per_pack_image_budget_binds_before_the_token_budget(ray_local, tmp_path):
    """24 samples of one 64-token image (about 80 tokens each) fit two 2048-token packs by
    tokens, but a pack may hold only 200 image tokens: 8 packs of 3; a sample of 4 images
    (256 image tokens) cannot be packed at all."""
    rows = [caption_row(i, f"a red square, number {i}", [image_bytes(256, 256)]) for i in range(24)]
    four = conversation_row(
        99,
        [("user", "<image> " * 4 + "Which?"), ("assistant", "All.")],
        [image_bytes(256, 256)] * 4,
    )
    write_curated(str(tmp_path / "curated.parquet"), [*rows, four])
    manifest = manifest_for(str(tmp_path / "curated.parquet"), str(tmp_path / "packed"), BUDGET)
    result = run_pack(manifest)
    t = result.index["totals"]
    assert result.index["max_image_tokens"] == 200
    assert t["samples_in"] == 25 and t["dropped"] == {"too_many_image_tokens": 1}
    packs = list(PackedDataset(result.output).iter_packs())
    assert all(p["num_image_tokens"] <= 200 for p in packs)
    assert sorted(len(p["sample_ids"]) for p in packs) == [3] * 8
    assert all(p["num_image_tokens"] == 3 * 64 for p in packs)
    # every pack was cut by its image budget: the token budget had room for another sample
    longest = max(max(np.diff(p["cu_seqlens"])) for p in packs)
    assert all(p["num_tokens"] + longest <= 2048 for p in packs)
    assert t["tokens"] <= 2 * 2048


def template_tokenizer():
    """The tokenizer as a plain ``tokenizers.Tokenizer`` that parses special-token strings:
    the peer of our id-by-id template (control tokens come from spelling them in the text)."""
    from tokenizers import Tokenizer

    peer = Tokenizer.from_str(load_tokenizer().backend.to_str())
    peer.encode_special_tokens = False
    return lambda text: peer.encode(text, add_special_tokens=False).ids


def expected_sample(row: dict, grids: list[tuple[int, int]], encode) -> dict[str, list[int]]:
    """A packed sample built by hand from FORMAT.md: the ``neo1_0`` (ChatML) template spelled
    out as text, assistant answers plus their ``<|im_end|>\\n`` supervised (text documents
    entirely), labels shifted one left, and the T/H/W rule walked token by token."""
    if row["kind"] == "text":
        ids = encode(row["text"] + "<|endoftext|>")
        supervised = [True] * len(ids)
    else:
        if row["kind"] == "caption":  # caption_prompt "" and caption_choice first
            turns = [("user", "<image>\n"), ("assistant", row["captions"][0]["text"].strip())]
        else:
            turns = [(t["role"], t["content"]) for t in row["conversation"]]
        images = iter(grids)
        text, answers = "", []  # answers: (text before, text through) each assistant answer
        for role, content in turns:
            while "<image>" in content:
                r, c = next(images)
                content = content.replace(
                    "<image>", "<img>" + "<IMG_CONTEXT>" * (r * c) + "</img>", 1
                )
            text += f"<|im_start|>{role}\n"
            before = text
            text += f"{content}<|im_end|>\n"
            if role == "assistant":
                answers.append((before, text))
        assert next(images, None) is None
        ids = encode(text)
        supervised = [False] * len(ids)
        for before, through in answers:
            a, b = encode(before), encode(through)
            assert ids[: len(b)] == b and b[: len(a)] == a  # the text splits at token bounds
            supervised[len(a) : len(b)] = [True] * (len(b) - len(a))
    labels = [ids[i + 1] if supervised[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)]
    labels.append(IGNORE_INDEX)  # the last token predicts nothing
    t, h, w = [], [], []
    step, images = -1, iter(grids)
    k = cols = 0
    previous = None
    for tok in ids:
        if tok == IMG_CONTEXT_ID:
            if previous != IMG_CONTEXT_ID:  # a new image: one T step for all its tokens
                step += 1
                k, (_, cols) = 0, next(images)
            t.append(step)
            h.append(k // cols)
            w.append(k % cols)
            k += 1
        else:
            step += 1
            t.append(step)
            h.append(0)
            w.append(0)
        previous = tok
    return {"input_ids": ids, "labels": labels, "t_index": t, "h_index": h, "w_index": w}


def test_packed_samples_equal_encoding_their_source_rows(packed, curated_dir):
    """Round trip: every packed sample's token, label and T/H/W arrays are what FORMAT.md's
    template and rules make of its source row (built by hand here, not by the encoder), its
    images are at the Qwen2-VL smart-resize size of the source images and are the bytes the
    encoder makes of them."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    sources = {r["sample_id"]: r for r in pq.read_table(str(curated_dir)).to_pylist()}
    m = manifest_for(str(curated_dir), packed.output)
    enc = SampleEncoder(load_tokenizer(), encode_settings(m))
    encode = template_tokenizer()
    seen, kinds = 0, Counter()
    for pack in PackedDataset(packed.output).iter_packs():
        cu = pack["cu_seqlens"]
        first_image = 0
        for k, sid in enumerate(pack["sample_ids"]):
            row = sources[sid]
            n_img = len(row["images"] or [])
            sizes = list(
                zip(
                    pack["image_heights"][first_image : first_image + n_img],
                    pack["image_widths"][first_image : first_image + n_img],
                    strict=True,
                )
            )
            for (h, w), src, data in zip(
                sizes, row["images"] or [], pack["images"][first_image:], strict=False
            ):
                with Image.open(io.BytesIO(src["bytes"])) as im:
                    peer = smart_resize(im.height, im.width, 32, 4096, 262144)
                with Image.open(io.BytesIO(data)) as stored:
                    assert (h, w) == peer == (stored.height, stored.width), sid
            want = expected_sample(row, [(h // 32, w // 32) for h, w in sizes], encode)
            seg = slice(cu[k], cu[k + 1])
            for col in ("input_ids", "labels", "t_index", "h_index", "w_index"):
                assert pack[col][seg] == want[col], (sid, col)
            assert pack["images"][first_image : first_image + n_img] == enc(row).images
            first_image += n_img
            seen += 1
            kinds[row["kind"]] += 1
    assert seen == packed.index["totals"]["samples"]
    assert set(kinds) == {"caption", "conversation", "text"}


def test_shards_read_with_datasets_without_project_code(packed):
    import datasets

    files = [f.path for f in fsspec.open_files(f"{packed.output}/shards/**/*.parquet")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == packed.index["totals"]["packs"]
    row = ds[0]
    assert len(row["input_ids"]) == row["num_tokens"] == len(row["t_index"])
    assert sum(ds["num_tokens"]) == packed.index["totals"]["tokens"]


def test_rerun_after_success_does_nothing(packed, curated_dir):
    again = run_pack(manifest_for(str(curated_dir), packed.output))
    assert again.skipped and again.index == packed.index


def test_another_manifest_into_the_same_output_is_refused(packed, curated_dir):
    other = parse_manifest(
        MANIFEST.format(curated=curated_dir, packed=packed.output).replace("0.25", "0.2"), "x.yaml"
    )
    with pytest.raises(OutputConflict, match="another manifest"):
        run_pack(other)


def _shard_hashes(index: dict) -> dict:
    return {s["path"]: s["sha256"] for s in index["shards"]}


def test_same_input_and_seed_give_identical_shards(packed, curated_dir, tmp_path):
    again = run_pack(manifest_for(str(curated_dir), str(tmp_path / "again")))
    assert _shard_hashes(again.index) == _shard_hashes(packed.index)


def test_rerun_after_a_crash_gives_the_same_shards(ray_local, packed, curated_dir, tmp_path):
    """Leave the state a kill -9 leaves (some windows done, shards of an unfinished window
    written, a temporary file, no index), rerun, and get exactly the uninterrupted result."""
    out = tmp_path / "crashed"
    m = manifest_for(str(curated_dir), str(out))
    run_pack(m)
    (out / "index.json").unlink()
    markers = sorted((out / "_work" / "windows").iterdir())
    assert len(markers) >= 2
    unfinished = json.loads(markers[-1].read_text())
    markers[-1].unlink()  # this window was being packed when the job died
    first = out / unfinished["shards"][0]["path"]
    first.write_bytes(first.read_bytes()[:100])  # (atomic commits make torn shards impossible,
    # but a rerun must not trust any shard of a window without its marker)
    (out / unfinished["shards"][-1]["path"]).unlink()
    stale = first.parent / (first.name + ".tmp-" + "de" * 16)
    stale.write_bytes(b"partial")
    result = run_pack(m)
    assert not result.skipped and not stale.exists()
    assert _shard_hashes(result.index) == _shard_hashes(packed.index)
    assert result.index["totals"] == packed.index["totals"]
    assert PackedDataset(str(out)).verify() == []


def test_pack_through_s3(ray_local, s3_bucket, curated_dir):
    """Curated input and packed output on an S3 server (moto on 127.0.0.1)."""
    fs = fsspec.filesystem("s3")
    for p in sorted(curated_dir.iterdir()):
        fs.put(str(p), f"{s3_bucket}/curated/{p.name}")
    result = run_pack(manifest_for(f"{s3_bucket}/curated", f"{s3_bucket}/packed"))
    ds = PackedDataset(f"{s3_bucket}/packed")
    assert ds.verify() == []
    assert ds.index["totals"]["samples_in"] == 136
    verify_report(result.index)
    pack = ds.read_pack(0, 0)
    assert pack["num_tokens"] == len(pack["input_ids"])
    assert fs.exists(f"{s3_bucket}/packed/rejected")
    assert json.loads(fs.cat(f"{s3_bucket}/packed/index.json"))["shards"] == result.index["shards"]


def test_an_input_file_of_another_schema_is_refused_by_name(tmp_path):
    import pyarrow as pa

    from neo_data.format.schema import SchemaMismatch
    from neo_data.pack.plan import plan_units

    good = write_curated(str(tmp_path / "good.parquet"), [text_row(0, "fine")])
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sample_id": ["x"], "caption": ["no kind, no source"]}), bad)
    with pytest.raises(SchemaMismatch, match=r"bad\.parquet: required column 'kind' is missing"):
        plan_units([good, str(bad)])
    assert [u.num_rows for u in plan_units([good])] == [1]


def test_token_columns_are_zstd_and_images_stored_as_is(packed):
    path = f"{packed.output}/{PackedDataset(packed.output).shards[0]['path']}"
    meta = pq.ParquetFile(path).metadata.row_group(0)
    codec = {
        meta.column(i).path_in_schema.split(".")[0]: meta.column(i).compression
        for i in range(meta.num_columns)
    }
    for col in ("input_ids", "labels", "t_index", "h_index", "w_index", "image_ordinal"):
        assert codec[col] == "ZSTD", col
    assert codec["images"] == "UNCOMPRESSED"


def test_the_driver_never_reads_the_input_rows(
    ray_local, packed, curated_dir, tmp_path, monkeypatch
):
    """The text quota and the recount run in Ray tasks: with reading input ids made to fail in
    the driver process (the tasks import their own copy), the job still gives the same dataset,
    so the driver's memory does not grow with the input's rows."""
    import neo_data.pack.job as job
    import neo_data.pack.plan as plan

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read input rows")

    monkeypatch.setattr(plan, "read_input_ids", refuse)
    monkeypatch.setattr(job, "read_input_ids", refuse)
    result = run_pack(manifest_for(str(curated_dir), str(tmp_path / "ds")))
    assert _shard_hashes(result.index) == _shard_hashes(packed.index)
    assert result.index["totals"] == packed.index["totals"]


def test_a_missing_or_stray_rejected_file_stops_the_index(ray_local, curated_dir, tmp_path):
    """Every window is recounted from its files before the index: a rejected/ file a window
    wrote and that is gone, or a file no window wrote, leaves the dataset without index.json,
    naming the file; restoring it lets the rerun finish."""
    out = tmp_path / "ds"
    m = manifest_for(str(curated_dir), str(out))
    run_pack(m)
    (out / "index.json").unlink()
    files = sorted((out / "rejected").glob("*.parquet"))
    assert files
    kept = files[0].read_bytes()
    files[0].unlink()
    with pytest.raises(RuntimeError, match=rf"rejected/{files[0].name} is missing"):
        run_pack(m)
    assert not (out / "index.json").exists()
    files[0].write_bytes(kept)
    (out / "rejected" / "someone-else.parquet").write_bytes(kept)
    with pytest.raises(
        RuntimeError, match=r"belong to no window of the plan, e\.g\. rejected/some"
    ):
        run_pack(m)
    (out / "rejected" / "someone-else.parquet").unlink()
    assert not run_pack(m).skipped and (out / "index.json").exists()
