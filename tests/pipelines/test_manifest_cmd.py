"""`neo manifest validate|show|set|diff|schema|example` through the `neo` command, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from neo_data.manifest import load_manifest
from pipelines import cli
from tests.helpers import REPO

DEMO = (REPO / "manifests" / "demo.yaml").read_text()


def stage_files(tmp_path: Path) -> tuple[Path, Path]:
    """demo.yaml as a base and a midtrain child that extends it."""
    base = tmp_path / "base.yaml"
    base.write_text(DEMO)
    child = tmp_path / "mid.yaml"
    child.write_text(
        "# mid-training: longer packs\n"
        "extends: base.yaml\n"
        "name: mid\n"
        "stage: midtrain\n"
        "pack:\n"
        "  seq_len: 8192   # twice the base\n"
    )
    return base, child


def test_validate_resolves_extends(tmp_path, capsys):
    base, child = stage_files(tmp_path)
    assert cli.main(["manifest", "validate", str(base), str(child)]) == 0
    out = capsys.readouterr().out
    assert f"{child}: ok (mid, stage midtrain, sha256 " in out
    assert load_manifest(child).content_hash()[:12] in out


def test_show_merged_resolved_and_one_key(tmp_path, capsys):
    _, child = stage_files(tmp_path)
    assert cli.main(["manifest", "show", str(child)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"# {child} extends {tmp_path / 'base.yaml'}"
    shown = yaml.safe_load(out)
    assert "extends" not in shown and shown["name"] == "mid"
    assert shown["pack"]["seq_len"] == 8192 and shown["pack"]["packs_per_shard"] == 16
    assert "window_samples" not in shown["pack"]  # defaults only with --resolved

    assert cli.main(["manifest", "show", str(child), "--resolved"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved == load_manifest(child).resolved()
    assert resolved["pack"]["window_samples"] == 8192

    assert cli.main(["manifest", "show", str(child), "pack.buckets[1]"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "pack.buckets[1]": {"name": "high", "max_image_tokens": 256}
    }
    assert cli.main(["manifest", "show", str(child), "pack.nope"]) == 2
    assert f"{child}: no pack.nope in the manifest" in capsys.readouterr().err


def test_show_refuses_an_invalid_manifest(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.replace("packs_per_shard: 16", "packs_per_shard: 0"))
    assert cli.main(["manifest", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    line = DEMO[: DEMO.index("packs_per_shard: 16")].count("\n") + 1
    assert f"{bad}:{line}: pack.packs_per_shard: 0 -- Input should be greater than 0" in err


def test_set_edits_in_place_and_refuses_invalid(tmp_path, capsys):
    _, child = stage_files(tmp_path)
    assert cli.main(["manifest", "set", str(child), "pack.seq_len=16384", "pack.seed=5"]) == 0
    assert "set 2 value(s); ok (mid, stage midtrain)" in capsys.readouterr().out
    text = child.read_text()
    assert "  seq_len: 16384  # twice the base\n" in text and "  seed: 5\n" in text
    assert text.startswith("# mid-training: longer packs\nextends: base.yaml\n")

    before = child.read_text()
    assert cli.main(["manifest", "set", str(child), "pack.text_ratio=1.5"]) == 2
    err = capsys.readouterr().err
    assert f"{child}:" in err and "pack.text_ratio: 1.5 -- Input should be less than 1" in err
    assert err.rstrip().endswith(f"{child}: not changed")
    assert child.read_text() == before


def test_diff_exit_status_like_diff(tmp_path, capsys):
    base, child = stage_files(tmp_path)
    assert cli.main(["manifest", "diff", str(base), str(base)]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["manifest", "diff", str(base), str(child)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"--- {base}", f"+++ {child}"]
    assert lines[2:] == [
        '- name: "demo"',
        '+ name: "mid"',
        '- stage: "pretrain"',
        '+ stage: "midtrain"',
        "- pack.seq_len: 512",
        "+ pack.seq_len: 8192",
    ]
    assert cli.main(["manifest", "diff", str(base), str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: no such manifest" in capsys.readouterr().err


def test_schema_includes_the_nested_sections(capsys):
    assert cli.main(["manifest", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    props = set(schema["properties"])
    assert {"extends", "name", "data", "pack", "curate", "recaption", "train"} <= props
    defs = schema["$defs"]
    for section in ("PackSpec", "DataSpec", "CurateSpec", "RecaptionSpec", "TrainSpec"):
        assert section in defs and f"{section}Partial" in defs
    assert defs["PackSpec"]["additionalProperties"] is False
    assert "buckets" in defs["PackSpec"]["properties"]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["manifest", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("validate", "show", "set", "diff", "schema", "example"):
        assert f"neo manifest {word}" in out


BUNDLED = REPO / "manifests"


def test_example_lists_every_bundled_manifest_with_its_purpose(capsys):
    assert cli.main(["manifest", "example"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(p.stem for p in BUNDLED.glob("*.yaml"))
    assert [line.split()[0] for line in lines[1:]] == names
    assert all(len(line) <= 100 for line in lines)
    assert "  base  " in lines[1] and lines[1].endswith("What the three training stages share.")


def test_example_that_extends_prints_a_manifest_that_stands_alone(tmp_path, capsys):
    """`neo manifest example pretrain > my.yaml` in an empty folder (no base.yaml beside it)
    validates and resolves to exactly what manifests/pretrain.yaml resolves to."""
    assert cli.main(["manifest", "example", "pretrain"]) == 0
    out = capsys.readouterr().out
    mine = tmp_path / "my.yaml"
    mine.write_text(out)
    assert cli.main(["manifest", "validate", str(mine)]) == 0
    assert f"{mine}: ok (neo-pretrain, stage pretrain" in capsys.readouterr().out
    assert (
        load_manifest(mine).content_hash()
        == load_manifest(BUNDLED / "pretrain.yaml").content_hash()
    )
    assert "extends" not in yaml.safe_load(out)
    header = out[: out.index("\nname: ")]
    assert header.startswith(
        "# `neo manifest example pretrain`: pretrain.yaml with what it extends (base.yaml)"
    )
    assert "--as-written" in header and "`neo manifest example base > base.yaml`" in header
    leading = (BUNDLED / "pretrain.yaml").read_text().split("\nextends:")[0]
    assert leading in header  # the file's own comment block stays


def test_example_as_written_needs_its_base_beside_it(tmp_path, capsys):
    assert cli.main(["manifest", "example", "pretrain", "--as-written"]) == 0
    (tmp_path / "pretrain.yaml").write_text(capsys.readouterr().out)
    assert (tmp_path / "pretrain.yaml").read_text() == (BUNDLED / "pretrain.yaml").read_text()
    assert cli.main(["manifest", "validate", str(tmp_path / "pretrain.yaml")]) == 1
    assert "base.yaml: no such manifest" in capsys.readouterr().err
    assert cli.main(["manifest", "example", "base.yaml"]) == 0  # the suffix may be given
    (tmp_path / "base.yaml").write_text(capsys.readouterr().out)
    assert (
        load_manifest(tmp_path / "pretrain.yaml").content_hash()
        == load_manifest(BUNDLED / "pretrain.yaml").content_hash()
    )


def test_example_without_extends_comes_as_written(capsys):
    for name in ("curate_example", "demo"):
        assert cli.main(["manifest", "example", name]) == 0
        assert capsys.readouterr().out == (BUNDLED / f"{name}.yaml").read_text()


def test_example_unknown_name_lists_the_names(capsys):
    assert cli.main(["manifest", "example", "pretrian"]) == 2
    err = capsys.readouterr().err
    assert "no example manifest 'pretrian'; there are: base, curate_example, demo," in err
