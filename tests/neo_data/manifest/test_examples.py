"""The manifests that ship with the package (``neo_data.manifest.examples``) are the repository's
``manifests/`` folder: the same files, every one found by its name, each with a purpose line."""

from __future__ import annotations

import pytest

from neo_data.manifest import (
    ManifestError,
    example_names,
    example_path,
    example_purpose,
    example_text,
    load_manifest,
)
from pipelines.demo import STAGE_MANIFESTS
from tests.helpers import REPO

BUNDLED = REPO / "manifests"


def test_the_package_holds_the_manifests_folder():
    assert example_names() == [
        "base", "curate_example", "demo", "demo-midtrain", "demo-sft",
        "midtrain", "pretrain", "recaption_example", "sft",
    ]  # fmt: skip
    for name in example_names():
        assert example_path(name).read_text() == (BUNDLED / f"{name}.yaml").read_text()
    assert example_path("pretrain.yaml") == example_path("pretrain")


def test_the_demo_stages_load_from_the_package():
    stages = [load_manifest(example_path(name)) for name in STAGE_MANIFESTS]
    assert [(m.name, m.stage) for m in stages] == [
        ("demo", "pretrain"),
        ("demo-midtrain", "midtrain"),
        ("demo-sft", "sft"),
    ]


@pytest.mark.parametrize("width", [40, 80])
def test_purpose_is_the_first_sentence_on_one_line(width):
    assert example_purpose("base") == "What the three training stages share."
    assert example_purpose("recaption_example", 200) == (
        "Recaption curated samples with a captioning model, then pack with the new captions."
    )
    for name in example_names():
        purpose = example_purpose(name, width)
        assert purpose and "\n" not in purpose and len(purpose) <= width


def test_every_example_stands_alone(tmp_path):
    """Written alone into an empty folder, each packaged manifest resolves to what its file does."""
    for name in example_names():
        (tmp_path / name).mkdir()
        alone = tmp_path / name / "my.yaml"
        alone.write_text(example_text(name))
        assert (
            load_manifest(alone).content_hash() == load_manifest(example_path(name)).content_hash()
        )
        assert example_text(name, as_written=True) == example_path(name).read_text()


def test_unknown_name():
    with pytest.raises(ManifestError, match="no example manifest 'nope'; there are: base, "):
        example_path("nope")
