"""Manifests: the YAML files users edit, validated at the boundary with pydantic.

``model`` is the manifest itself; ``pack``, ``curate``, ``recaption`` and ``train`` specify one
section each; ``loading`` reads files (``extends``, ``--set``, errors with file and line);
``editing`` changes files in place, compares and describes them (JSON Schema); ``examples``
finds the manifests that ship with the package. The names below are the package's public API.
"""

from neo_data.manifest.curate import CurateSpec
from neo_data.manifest.editing import (
    MISSING,
    diff_manifests,
    edit_manifest,
    flatten,
    manifest_json_schema,
    manifest_yaml,
)
from neo_data.manifest.examples import example_names, example_path, example_purpose, example_text
from neo_data.manifest.loading import (
    ManifestError,
    ResolvedManifest,
    format_key_path,
    get_path,
    load_manifest,
    parse_key_path,
    parse_manifest,
    parse_overrides,
    resolve_manifest,
)
from neo_data.manifest.model import STAGE_PIXELS, STAGE_SEQ_LEN, DataSpec, Manifest, Stage
from neo_data.manifest.pack import Bucket, ImageEncodingSpec, PackSpec
from neo_data.manifest.recaption import RecaptionSpec
from neo_data.manifest.train import TrainSpec

__all__ = [
    "MISSING",
    "STAGE_PIXELS",
    "STAGE_SEQ_LEN",
    "Bucket",
    "CurateSpec",
    "DataSpec",
    "ImageEncodingSpec",
    "Manifest",
    "ManifestError",
    "PackSpec",
    "RecaptionSpec",
    "ResolvedManifest",
    "Stage",
    "TrainSpec",
    "diff_manifests",
    "edit_manifest",
    "example_names",
    "example_path",
    "example_purpose",
    "example_text",
    "flatten",
    "format_key_path",
    "get_path",
    "load_manifest",
    "manifest_json_schema",
    "manifest_yaml",
    "parse_key_path",
    "parse_manifest",
    "parse_overrides",
    "resolve_manifest",
]
