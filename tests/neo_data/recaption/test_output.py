"""Writing one input file's recaptioned output without Ray: the policy applied per row, the
counts in the marker, the failures file holding exactly the failed rows, and a failures file
left by an interrupted earlier attempt removed when the file now has none."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from neo_data.encoding.images import ImageRejected, open_image
from neo_data.format.storage import url_to_fs
from neo_data.manifest.recaption import RecaptionSpec
from neo_data.recaption.job import plan_inputs
from neo_data.recaption.output import write_file
from tests.helpers import caption_row, image_bytes, text_row, write_curated


def result(status: str, text: str | None = None, reason: str | None = None) -> dict:
    created = "2026-01-01T00:00:00Z" if status == "recaptioned" else None
    return {"status": status, "text": text, "reason": reason, "detail": reason and "why",
            "created_at": created}  # fmt: skip


def test_one_file_is_written_with_its_policy_counts_and_failures(tmp_path):
    rows = [caption_row(i, f"orig {i}", [image_bytes(8, 8)]) for i in range(3)]
    write_curated(str(tmp_path / "in.parquet"), [*rows, text_row(3, "a document")])
    (file,) = plan_inputs([str(tmp_path / "in.parquet")])
    out = tmp_path / "out"
    spec = RecaptionSpec(input=["x"], output=str(out), backend="neo", model="m", policy="replace")
    results = {
        0: result("recaptioned", "new 0"),
        1: result("failed", reason="image_decode_error"),
        2: result("recaptioned", "new 2"),
        3: result("skipped", reason="kind_not_caption"),
    }
    fs, root = url_to_fs(str(out))
    done = write_file(spec, file, results, fs, root)
    assert (done.rows, done.recaptioned) == (4, 2)
    assert done.failed == {"image_decode_error": 1} and done.skipped == {"kind_not_caption": 1}
    assert done.failures_file == "failures/in.parquet"
    got = pq.read_table(out / "samples" / "in.parquet").to_pylist()
    assert [[c["text"] for c in r["captions"] or []] for r in got] == [
        ["new 0", "orig 0"], ["orig 1"], ["new 2", "orig 2"], [],
    ]  # fmt: skip
    assert got[0]["captions"][0]["provenance"]["created_at"] == "2026-01-01T00:00:00Z"
    failures = pq.read_table(out / "failures" / "in.parquet").to_pylist()
    assert [(f["sample_id"], f["input_row"], f["reason"]) for f in failures] == [
        ("test-000001", 1, "image_decode_error")
    ]
    marker = json.loads((out / "_work" / "in.parquet.json").read_text())
    assert marker["recaptioned"] == 2 and marker["output"] == "samples/in.parquet"


def test_a_stale_failures_file_is_removed_when_the_file_now_has_none(tmp_path):
    write_curated(str(tmp_path / "in.parquet"), [caption_row(0, "orig", [image_bytes(8, 8)])])
    (file,) = plan_inputs([str(tmp_path / "in.parquet")])
    out = tmp_path / "out"
    (out / "failures").mkdir(parents=True)
    (out / "failures" / "in.parquet").write_bytes(b"left by an interrupted attempt")
    spec = RecaptionSpec(input=["x"], output=str(out), backend="neo", model="m")
    fs, root = url_to_fs(str(out))
    done = write_file(spec, file, {0: result("recaptioned", "new")}, fs, root)
    assert done.failures_file is None and done.failed == {}
    assert not (out / "failures" / "in.parquet").exists()
    (row,) = pq.read_table(out / "samples" / "in.parquet").to_pylist()
    assert [c["text"] for c in row["captions"]] == ["orig", "new"]  # keep_both: original first


def test_a_failed_rows_detail_is_the_same_in_every_run():
    """Pillow names the BytesIO's memory address when it cannot identify an image; the detail
    written to failures/ drops it, so a resumed run writes the uninterrupted run's bytes (the
    recaption kill scenario found it)."""
    with pytest.raises(ImageRejected) as e:
        open_image(b"\x89PNG\r\n broken", 1 << 20)
    assert (e.value.reason, e.value.detail) == (
        "image_decode_error",
        "UnidentifiedImageError: cannot identify image file",
    )
