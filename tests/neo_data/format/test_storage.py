"""The storage layer every job shares: input expansion names the field of a bad pattern, the
resume-or-refuse guard skips, resumes or refuses as the stamps say, and the one Parquet writer
leaves image bytes as they are (flat or nested) and compresses the rest."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neo_data.format.schema import CURATED_SCHEMA, WORK_DIR
from neo_data.format.storage import (
    OutputConflict,
    list_inputs,
    resume_or_refuse,
    table_to_parquet_bytes,
)
from tests.helpers import caption_row, image_bytes


def test_list_inputs_expands_files_directories_and_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.parquet", "d/sub/a.parquet", "d/notes.txt", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    got = list_inputs(
        [str(tmp_path / "d"), str(tmp_path / "*.parquet"), str(tmp_path / "c.parquet")]
    )
    assert got == sorted(
        [
            str(tmp_path / "c.parquet"),
            str(tmp_path / "d/b.parquet"),
            str(tmp_path / "d/sub/a.parquet"),
        ]
    )
    txt = list_inputs([str(tmp_path / "d")], keep=lambda p: p.endswith(".txt"), noun="file")
    assert txt == [str(tmp_path / "d/notes.txt")]


def test_list_inputs_names_the_field_of_a_bad_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^data\.curated: '.*nope' does not exist$"):
        list_inputs([str(tmp_path / "nope")], "data.curated")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^recaption\.input: .* matches no Parquet file$"):
        list_inputs([str(tmp_path / "empty")], "recaption.input")


def guard(out, digest, commit=True):
    return resume_or_refuse(
        str(out),
        digest,
        stamp="job.sha256",
        made_with="another manifest",
        field="data.out",
        commit=("index.json", lambda doc: doc["sha256"]) if commit else None,
    )


def test_resume_or_refuse(tmp_path):
    out = tmp_path / "out"
    assert guard(out, "a" * 64) is None  # fresh: stamped, run
    assert (out / WORK_DIR / "job.sha256").read_text() == "a" * 64
    assert guard(out, "a" * 64) is None  # same settings, unfinished: resume
    with pytest.raises(
        OutputConflict, match=r"_work holds work made with another manifest .*data\.out"
    ):
        guard(out, "b" * 64)
    (out / "index.json").write_text(json.dumps({"sha256": "a" * 64, "n": 3}))
    assert guard(out, "a" * 64) == {"sha256": "a" * 64, "n": 3}  # complete: nothing to do
    with pytest.raises(OutputConflict, match=r"already holds output made with another manifest"):
        guard(out, "b" * 64)
    with pytest.raises(OutputConflict, match="_work holds work"):  # no commit file to look at
        guard(out, "b" * 64, commit=False)


def codecs(data: bytes) -> dict[str, str]:
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    return {
        meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)
    }


def test_the_writer_keeps_image_bytes_and_compresses_the_rest():
    flat = pa.table({"images": pa.array([[b"\xff\xd8jpeg"]], pa.list_(pa.binary())), "n": [1]})
    assert codecs(table_to_parquet_bytes(flat)) == {
        "images.list.element": "UNCOMPRESSED",
        "n": "ZSTD",
    }
    curated = pa.Table.from_pylist([caption_row(0, "a cat", [image_bytes(8, 8)])], CURATED_SCHEMA)
    got = codecs(table_to_parquet_bytes(curated))
    assert got.pop("images.list.element.bytes") == "UNCOMPRESSED"
    assert set(got.values()) == {"ZSTD"}, got
    assert pq.read_table(io.BytesIO(table_to_parquet_bytes(curated))).equals(curated)


def test_atomic_write_fsyncs_the_file_and_its_directory_on_local_disks(tmp_path, monkeypatch):
    """A rename without fsync can leave an empty file after a power cut: the data is synced
    before the rename and the directory entry after it."""
    import os
    import stat

    import fsspec

    from neo_data.format.storage import atomic_write

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(
            "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else os.readlink(f"/proc/self/fd/{fd}")
        )
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "sub" / "a.json"
    atomic_write(fsspec.filesystem("file"), str(target), b"payload")
    assert target.read_bytes() == b"payload"
    assert len(synced) == 2 and synced[0].startswith(str(target) + ".tmp-") and synced[1] == "dir"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_stale_temporaries_of_a_killed_job_are_removed_and_nothing_else(tmp_path):
    import fsspec

    from neo_data.format.storage import remove_stale_temporaries

    keep = ["shards/low/shard-00000-0000.parquet", "rejected/x.parquet", "notes.tmp-mine",
            "shards/low/a.parquet.tmp-1234", "other/b.parquet.tmp-" + "a" * 32]  # fmt: skip
    stale = ["shards/low/shard-00000-0001.parquet.tmp-" + "0f" * 16,
             "_work/windows/w00001.json.tmp-" + "e" * 32]  # fmt: skip
    for name in keep + stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(
        fsspec.filesystem("file"), str(tmp_path), ["shards", "rejected", "_work"]
    )
    assert sorted(removed) == sorted(str(tmp_path / s) for s in stale)
    assert all((tmp_path / k).exists() for k in keep)
    assert not any((tmp_path / s).exists() for s in stale)
