"""The `neo` command's doors: manifest validation errors, shard browsing, the demo main job."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines import cli
from tests.helpers import REPO


def test_every_bundled_manifest_validates(capsys):
    files = sorted(str(p) for p in (REPO / "manifests").glob("*.yaml"))
    assert files
    assert cli.main(["manifest", "validate", *files]) == 0
    assert capsys.readouterr().out.count(": ok") == len(files)


BAD = """\
name: bad
stage: pretrain
data:
  curated: [x]
  packed: out
pack:
  seq_len: -5
  buckets:
    - {name: low, max_image_tokens: 64}
    - {name: High!, max_image_tokens: 256}
  text_ratoi: 0.3
"""


def test_manifest_errors_name_file_line_path_and_value(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    assert cli.main(["manifest", "validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:7: pack.seq_len: -5 -- Input should be greater than 0" in err
    assert f"{f}:10: pack.buckets[1].name: 'High!'" in err
    assert f"{f}:11: pack.text_ratoi: unknown key" in err


def test_manifest_schema_is_json_schema(capsys):
    assert cli.main(["manifest", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "pack" in schema["properties"]


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.slow
def test_browse_then_catch_a_corrupted_shard(demo_packed, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(demo_packed, out)
    packed = str(out / "packed")
    assert cli.main(["shards", "stats", packed]) == 0
    assert "text ratio" in capsys.readouterr().out
    assert cli.main(["shards", "verify", packed]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert cli.main(["shards", "show", packed, "--pack", "0", "--sample", "0"]) == 0
    shown = capsys.readouterr().out
    assert "sample 0:" in shown and "sample 1:" not in shown
    header = next(line for line in shown.splitlines() if "label" in line).split()
    assert header == ["pos", "T", "H", "W", "img", "label", "token"]

    # a corrupted shard is reported by verify
    shard = next((out / "packed" / "shards").rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    assert cli.main(["shards", "verify", packed]) == 1
    assert "sha256 differs" in capsys.readouterr().err
