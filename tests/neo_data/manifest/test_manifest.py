"""Manifests as a door: `extends` (merge, chains, cycles, error lines), in-place edits that keep
comments and refuse invalid results, diffs of resolved manifests, and the JSON Schema."""

from __future__ import annotations

import difflib
from pathlib import Path

import fsspec
import jsonschema
import pytest
import yaml

from neo_data.manifest import (
    MISSING,
    Manifest,
    ManifestError,
    diff_manifests,
    edit_manifest,
    load_manifest,
    manifest_json_schema,
    parse_key_path,
    parse_manifest,
    resolve_manifest,
)
from tests.helpers import REPO

BASE = """\
# the base every stage shares
name: base
stage: pretrain
data:
  curated: [s3://bucket/curated]
  packed: s3://bucket/packed/base
pack:
  seq_len: 4096            # tokens per pack
  max_pixels: 262144
  buckets:
    - {name: low, max_image_tokens: 64}
    - {name: high, max_image_tokens: 256}
  image_encoding: {format: jpeg, quality: 95}
  seed: 0
"""

CHILD = """\
extends: base.yaml
name: child
data:
  packed: s3://bucket/packed/child
pack:
  buckets:
    - {name: only, max_image_tokens: 512}
  image_encoding: {quality: 90}
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_extends_deep_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    m = load_manifest(write(tmp_path, "child.yaml", CHILD))
    assert m.name == "child"
    assert m.data.curated == ["s3://bucket/curated"]  # kept from the base
    assert m.data.packed == "s3://bucket/packed/child"  # replaced
    assert [b.name for b in m.pack.buckets] == ["only"]  # a list replaces whole
    assert m.pack.image_encoding.quality == 90 and m.pack.image_encoding.format == "jpeg"
    assert m.pack.seq_len == 4096 and m.pack.max_pixels == 262144


def test_content_hash_is_over_the_resolved_manifest(tmp_path):
    """A child and the single file a user would write by hand for it validate to one manifest
    with one hash; the base alone hashes differently."""
    write(tmp_path, "base.yaml", BASE)
    child = load_manifest(write(tmp_path, "child.yaml", CHILD))
    by_hand = parse_manifest(
        """\
name: child
stage: pretrain
data: {curated: [s3://bucket/curated], packed: s3://bucket/packed/child}
pack:
  seq_len: 4096
  max_pixels: 262144
  buckets: [{name: only, max_image_tokens: 512}]
  image_encoding: {format: jpeg, quality: 90}
  seed: 0
""",
        "by_hand.yaml",
    )
    assert child == by_hand
    assert child.content_hash() == by_hand.content_hash()
    assert child.content_hash() != load_manifest(tmp_path / "base.yaml").content_hash()


def test_a_child_can_drop_a_base_section_with_null(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    path = write(tmp_path, "child.yaml", "extends: base.yaml\nname: c\npack: null\n")
    with pytest.raises(ManifestError, match="pack: None -- Input should be a valid dictionary"):
        load_manifest(path)


def test_chain_of_three_with_relative_paths_across_folders(tmp_path):
    write(tmp_path, "common/base.yaml", BASE)
    write(tmp_path, "stages/mid.yaml", "extends: ../common/base.yaml\nstage: midtrain\n")
    top = write(tmp_path, "runs/exp/top.yaml", "extends: ../../stages/mid.yaml\nname: top\n")
    resolved = resolve_manifest(top)
    assert [Path(f).name for f in resolved.files] == ["top.yaml", "mid.yaml", "base.yaml"]
    m = resolved.validate()
    assert (m.name, m.stage, m.pack.seq_len) == ("top", "midtrain", 4096)
    # midtrain's pixel default applies only where no file sets max_pixels
    assert m.resolved_pack().max_pixels == 262144


def test_extends_cycles_are_refused_with_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "name: b\nextends: ./a.yaml\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(a)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'b.yaml'}:2: extends: './a.yaml' makes a cycle")
    assert msg.endswith(f"{a} -> {tmp_path / 'b.yaml'} -> {a}")
    selfish = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    with pytest.raises(ManifestError, match="makes a cycle"):
        load_manifest(selfish)


def test_errors_point_at_the_file_and_line_that_wrote_the_value(tmp_path):
    write(tmp_path, "base.yaml", BASE.replace("seed: 0", "seed: zero"))
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base.yaml\nname: child\npack:\n  text_ratio: 1.5\n  buckts: []\n",
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(child)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{child}: 3 problem(s)"
    assert f"  {child}:4: pack.text_ratio: 1.5 -- Input should be less than 1" in lines
    assert f"  {child}:5: pack.buckts: [] -- unknown key" not in lines  # lists are not shown
    assert any(line.startswith(f"  {child}:5: pack.buckts: unknown key") for line in lines)
    base = tmp_path / "base.yaml"
    assert any(line.startswith(f"  {base}:14: pack.seed: 'zero' -- ") for line in lines)


def test_a_value_the_child_replaces_is_reported_in_the_child(tmp_path):
    """The base's bucket list is valid; the child's replacement is not: the error is the
    child's, at the child's line, even though the base has an item at the same index."""
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base.yaml\npack:\n  buckets:\n    - {name: low}\n    - {name: x, max_image_tokens: 9999}\n",
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(child)
    assert f"{child}:4: pack.buckets[0].max_image_tokens: Field required" in str(e.value)


def test_extends_errors_name_the_extending_file(tmp_path):
    child = write(tmp_path, "child.yaml", "name: c\nextends: nowhere.yaml\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(child)
    assert str(e.value) == f"{child}:2: extends: {tmp_path / 'nowhere.yaml'}: no such manifest"
    bad = write(tmp_path, "bad.yaml", "extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ManifestError, match=r"bad.yaml:1: extends: \['a.yaml', 'b.yaml'\] -- "):
        load_manifest(bad)


def test_overrides_apply_after_extends_and_are_named_in_errors(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", CHILD)
    m = load_manifest(child, {"pack.buckets[0].max_image_tokens": 1024, "pack.seed": 7})
    assert (m.pack.buckets[0].max_image_tokens, m.pack.seed) == (1024, 7)
    with pytest.raises(ManifestError) as e:
        load_manifest(child, {"pack.seq_len": -1})
    assert "  --set pack.seq_len: pack.seq_len: -1 -- Input should be greater than 0" in str(
        e.value
    )
    with pytest.raises(ManifestError, match=r"pack.buckets\[3\]: no such list item"):
        load_manifest(child, {"pack.buckets[3].name": "x"})


@pytest.mark.slow
def test_extends_across_s3(s3_bucket):
    """A child on S3 names its base relative to itself; errors name the s3:// file."""
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_bucket}/manifests/base.yaml", BASE.encode())
    fs.pipe(
        f"{s3_bucket}/manifests/exp/child.yaml", CHILD.replace("base.yaml", "../base.yaml").encode()
    )
    m = load_manifest(f"{s3_bucket}/manifests/exp/child.yaml")
    assert m.data.curated == ["s3://bucket/curated"] and m.pack.buckets[0].name == "only"
    fs.pipe(f"{s3_bucket}/manifests/base.yaml", BASE.replace("seed: 0", "seed: x").encode())
    with pytest.raises(ManifestError, match=f"{s3_bucket}/manifests/base.yaml:14: pack.seed"):
        load_manifest(f"{s3_bucket}/manifests/exp/child.yaml")


def test_parse_key_path():
    assert parse_key_path("pack.buckets[1].max_image_tokens") == [
        "pack",
        "buckets",
        1,
        "max_image_tokens",
    ]
    assert parse_key_path("a.b[0][2]") == ["a", "b", 0, 2]
    for bad in ("pack..seq_len", "pack.buckets[x]", "[1]", "pack.", "a b"):
        with pytest.raises(ManifestError, match="not a key path"):
            parse_key_path(bad)


# --- edit in place -----------------------------------------------------------------------------


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_set_keeps_comments_quotes_and_layout(tmp_path):
    path = tmp_path / "demo.yaml"
    before = (REPO / "manifests" / "demo.yaml").read_text()
    path.write_text(before)
    m = edit_manifest(
        str(path),
        ["pack.seq_len=8192", "pack.buckets[1].max_image_tokens=300", "pack.text_ratio=0.25"],
    )
    after = path.read_text()
    assert changed_lines(before, after) == [
        "-  seq_len: 512               # tokens per pack (the paper uses 16,384 in pre-training)",
        "+  seq_len: 8192              # tokens per pack (the paper uses 16,384 in pre-training)",
        "-    - {name: high, max_image_tokens: 256}   # larger images (a manifest of your own)",
        "-  text_ratio: 0.1            # the paper's 3 : 7 text : multimodal would spend a third here",
        "+    - {name: high, max_image_tokens: 300}   # larger images (a manifest of your own)",
        "+  text_ratio: 0.25           # the paper's 3 : 7 text : multimodal would spend a third here",
    ]
    assert m == load_manifest(path)
    assert (m.pack.seq_len, m.pack.buckets[1].max_image_tokens, m.pack.text_ratio) == (
        8192,
        300,
        0.25,
    )


def test_set_adds_keys_and_flow_values_and_quotes_what_would_change_type(tmp_path):
    path = write(tmp_path, "m.yaml", "name: m  # mine\ndata:\n  curated: [a]\n  packed: out\n")
    edit_manifest(
        path,
        [
            "data.curated=[s3://b/x, s3://b/y]",
            'pack.caption_prompt="yes"',  # a string that YAML 1.1 would read as true
            "pack.image_encoding={format: png}",
        ],
    )
    text = Path(path).read_text()
    assert text.startswith("name: m  # mine\n")
    assert "curated: [s3://b/x, s3://b/y]" in text
    assert "image_encoding: {format: png}" in text
    m = load_manifest(path)
    assert m.data.curated == ["s3://b/x", "s3://b/y"]
    assert m.pack.caption_prompt == "yes"
    assert 'caption_prompt: "yes"' in text
    with pytest.raises(ManifestError, match="caption_prompt: True -- Input should be a valid str"):
        edit_manifest(path, ["pack.caption_prompt=yes"])  # unquoted: read as YAML reads it


def test_set_refuses_an_invalid_result_and_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "demo.yaml"
    before = (REPO / "manifests" / "demo.yaml").read_text()
    path.write_text(before)
    stat = path.stat()
    cases = {
        "pack.seq_len=-1": "pack.seq_len: -1 -- Input should be greater than 0",
        "pack.sequence_len=1": "pack.sequence_len: unknown key",
        "pack.buckets[5].name=x": r"pack.buckets[5]: no such item, the list has 2",
        "pack.seq_len.x=1": "pack.seq_len.x: pack.seq_len is not a mapping",
        "pack.seq_len": "expected KEY=VALUE",
        "pack.buckets[0].max_image_tokens=512": "strictly increasing max_image_tokens",
    }
    for item, message in cases.items():
        with pytest.raises(ManifestError) as e:
            edit_manifest(str(path), ["pack.seed=1", item])  # the valid first edit is not kept
        assert message in str(e.value), (item, str(e.value))
        assert path.read_text() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["demo.yaml"]  # no temporary file left


def test_set_refuses_a_file_that_is_not_yaml(tmp_path):
    path = write(tmp_path, "broken.yaml", "name: x\ndata: [unclosed\n")
    with pytest.raises(ManifestError, match="broken.yaml: not valid YAML"):
        edit_manifest(path, ["name=y"])
    assert Path(path).read_text() == "name: x\ndata: [unclosed\n"


def test_set_copies_a_list_that_only_the_base_writes(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: c  # child\n")
    m = edit_manifest(child, ["pack.buckets[1].max_image_tokens=1024", "pack.seed=3"])
    assert [(b.name, b.max_image_tokens) for b in m.pack.buckets] == [("low", 64), ("high", 1024)]
    written = yaml.safe_load(Path(child).read_text())
    assert written["pack"]["buckets"] == [
        {"name": "low", "max_image_tokens": 64},
        {"name": "high", "max_image_tokens": 1024},
    ]
    assert "seq_len" not in written["pack"]  # only what the edit needs lands in the child
    assert Path(child).read_text().startswith("extends: base.yaml\nname: c  # child\n")
    assert (tmp_path / "base.yaml").read_text() == BASE


def test_set_validates_through_extends_and_reports_the_base(tmp_path):
    write(tmp_path, "base.yaml", BASE.replace("seed: 0", "seed: x"))
    child = write(tmp_path, "child.yaml", CHILD)
    with pytest.raises(ManifestError, match=r"base.yaml:14: pack.seed: 'x'"):
        edit_manifest(child, ["name=renamed"])
    assert Path(child).read_text() == CHILD


# --- diff and schema ---------------------------------------------------------------------------


def test_diff_of_resolved_manifests(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    base = load_manifest(tmp_path / "base.yaml")
    child = load_manifest(write(tmp_path, "child.yaml", CHILD))
    changes = {p: (a, b) for p, a, b in diff_manifests(base, child)}
    assert changes == {
        "name": ("base", "child"),
        "data.packed": ("s3://bucket/packed/base", "s3://bucket/packed/child"),
        "pack.buckets[0].name": ("low", "only"),
        "pack.buckets[0].max_image_tokens": (64, 512),
        "pack.buckets[1].name": ("high", MISSING),
        "pack.buckets[1].max_image_tokens": (256, MISSING),
        "pack.image_encoding.quality": (95, 90),
    }
    assert diff_manifests(child, child) == []
    # a stage default and the same value written out resolve alike: no difference
    explicit = parse_manifest(
        BASE.replace("  seed: 0", "  seed: 0\n  min_pixels: 65536"), "explicit.yaml"
    )
    assert diff_manifests(base, explicit) == []


def test_json_schema_accepts_what_the_model_accepts(tmp_path):
    """The schema and pydantic agree on full manifests; a file with `extends` may be partial
    at any depth but still may not hold unknown keys."""
    schema = manifest_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    demo = yaml.safe_load((REPO / "manifests" / "demo.yaml").read_text())
    good = [demo, yaml.safe_load(BASE)]
    bad = [
        {**demo, "colour": 1},
        {k: v for k, v in demo.items() if k != "data"},
        {**demo, "pack": {**demo["pack"], "seq_len": 0}},
        {**demo, "stage": "posttrain"},
    ]
    for doc in good:
        assert list(validator.iter_errors(doc)) == []
        Manifest.model_validate(doc)
    for doc in bad:
        assert list(validator.iter_errors(doc)), doc
        with pytest.raises(ValueError):
            Manifest.model_validate(doc)
    partial = yaml.safe_load(CHILD)
    assert list(validator.iter_errors(partial)) == []
    assert list(validator.iter_errors({**partial, "pack": {"buckets": [{"name": "x"}]}})) == []
    assert list(validator.iter_errors({**partial, "pack": {"seq_lenn": 1}}))
    assert list(validator.iter_errors({k: v for k, v in partial.items() if k != "extends"}))


FAKE_SECRET = "FAKE-SECRET-9f8e7d6c5b4a"


@pytest.mark.parametrize("name", ["credentials", "secrets.env", "id_rsa.json", "creds.yaml.bak"])
def test_extends_reads_manifest_files_only(tmp_path, name):
    """``extends`` names a base manifest: a .yaml/.yml file. Anything else (a credentials file,
    a dotenv, a key) is refused before it is read, so its content can never reach an error."""
    write(tmp_path, name, f"[default]\naws_secret_access_key = {FAKE_SECRET}\n")
    path = write(tmp_path, "m.yaml", f"extends: {name}\nname: x\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert FAKE_SECRET not in str(e.value)
    assert f"m.yaml:1: extends: {name!r}" in str(e.value) and ".yaml or .yml" in str(e.value)


@pytest.mark.parametrize(
    "ref", ["http://169.254.169.254/latest/meta-data/base.yaml", "https://example.com/b.yml"]
)
def test_extends_fetches_no_web_url(tmp_path, ref):
    path = write(tmp_path, "m.yaml", f"extends: {ref}\nname: x\n")
    with pytest.raises(ManifestError, match=r"m\.yaml:1: extends: .* not fetched"):
        load_manifest(path)


def test_unknown_keys_are_named_without_their_values(tmp_path):
    """A secrets file that is YAML, extended by mistake: every key is unknown; the error names
    each key with its file and line, never the value."""
    write(tmp_path, "secrets.yaml", f"api_key: {FAKE_SECRET}\ndb:\n  password: {FAKE_SECRET}\n")
    path = write(tmp_path, "m.yaml", BASE.replace("# the base", "extends: secrets.yaml\n#"))
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    msg = str(e.value)
    assert FAKE_SECRET not in msg
    assert "secrets.yaml:1: api_key: unknown key" in msg
    assert "secrets.yaml:3: db: unknown key" in msg


def test_yaml_errors_quote_no_line_of_the_file(tmp_path):
    path = write(tmp_path, "m.yaml", f"name: x\ntoken: {FAKE_SECRET}: [\n")
    with pytest.raises(ManifestError, match=r"m\.yaml:2:\d+: not valid YAML") as e:
        load_manifest(path)
    assert FAKE_SECRET not in str(e.value)
