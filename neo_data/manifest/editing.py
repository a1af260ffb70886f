"""Tools for people who edit manifests: ``neo manifest set`` (values changed in place, comments
and layout kept, nothing written unless the result validates), ``diff`` (what two resolved
manifests set differently) and ``schema`` (the JSON Schema editors validate with while typing).
"""

from __future__ import annotations

import copy
import functools
import io
import os
import tempfile
from collections.abc import Callable
from typing import Any

import fsspec
import yaml

from neo_data.manifest.loading import (
    ManifestError,
    format_key_path,
    get_path,
    is_url,
    parse_key_path,
    parse_manifest,
    read_manifest_text,
    resolve_text,
)
from neo_data.manifest.model import Manifest

# --- schema ------------------------------------------------------------------------------------


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema of a manifest, for editors that validate while typing.

    A file with ``extends`` is partial (its base supplies the rest), so the schema has two
    branches: without ``extends`` every required key must be there; with it none is, at any
    depth. Unknown keys are refused in both. Cross-field rules (bucket order, pixel budgets) are
    checked by ``neo manifest validate`` only.
    """
    full = Manifest.model_json_schema()
    defs = full.pop("$defs", {})
    required = full.pop("required", [])
    props = full["properties"]
    partial = _partial({"$defs": defs, "properties": props})
    schema = {
        **full,
        "properties": {
            "extends": {
                "type": "string",
                "description": "base manifest merged under this one: a path relative to this "
                "file, or a URL",
            },
            **{k: {"description": v.get("description", "")} for k, v in props.items()},
        },
        "$defs": {**defs, **partial["$defs"]},
        "if": {"required": ["extends"]},
        "then": {"properties": partial["properties"]},
        "else": {"properties": props, "required": required},
    }
    return schema


def _partial(node: Any) -> Any:
    """A copy of a schema fragment with no ``required`` and every ``$defs`` name suffixed."""
    if isinstance(node, list):
        return [_partial(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "required":
            continue
        if k == "$ref" and isinstance(v, str):
            out[k] = f"{v}Partial"
        elif k == "$defs":
            out[k] = {f"{name}Partial": _partial(d) for name, d in v.items()}
        else:
            out[k] = _partial(v)
    return out


# --- showing and comparing ---------------------------------------------------------------------


def manifest_yaml(data: dict[str, Any]) -> str:
    """Manifest data as YAML, keys in their order (what ``neo manifest show`` prints)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by key path (``pack.buckets[1].name``); empty mappings and lists are leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


MISSING = object()  # a path that one side of a diff does not have


def diff_manifests(a: Manifest, b: Manifest) -> list[tuple[str, Any, Any]]:
    """``(path, value in a, value in b)`` for every leaf of the resolved manifests that differs;
    a side without the path holds ``MISSING``. Paths in the order of ``a``, then ``b``'s new ones."""
    fa, fb = flatten(a.resolved()), flatten(b.resolved())
    paths = list(fa) + [p for p in fb if p not in fa]
    return [
        (p, fa.get(p, MISSING), fb.get(p, MISSING))
        for p in paths
        if fa.get(p, MISSING) != fb.get(p, MISSING)
    ]


# --- editing in place --------------------------------------------------------------------------


def edit_manifest(path: str, assignments: list[str]) -> Manifest:
    """Set ``KEY=VALUE`` items in the manifest file at ``path``, keeping comments and layout.

    Values are YAML scalars or flow collections (``[a, b]``, ``{name: x}``), read as the manifest
    loader reads them. A list inherited through ``extends`` is copied into the file before one
    of its items changes (lists replace whole). The edited manifest is validated, ``extends``
    included, before anything is written; an invalid result raises ManifestError and leaves the
    file as it was. The write replaces the file atomically.
    """
    from ruamel.yaml import YAML  # round-trip mode: comments, order, quotes and flow style kept
    from ruamel.yaml.error import YAMLError as RoundTripError

    text = read_manifest_text(path)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap long lines
    mapping, sequence, offset = _guess_indent(text)
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    try:
        doc = rt.load(text)
    except RoundTripError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: a manifest is a mapping of keys, got {type(doc).__name__}")
    inherited = functools.cache(lambda: resolve_text(text, path).data)  # read only if needed
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ManifestError(f"{item!r}: expected KEY=VALUE")
        keys = parse_key_path(key.strip())
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ManifestError(f"{key}: {raw!r} is not a YAML value: {e}") from e
        _assign(doc, keys, value, inherited)
    buf = io.StringIO()
    rt.dump(doc, buf)
    new_text = buf.getvalue()
    manifest = parse_manifest(new_text, path)
    _write_atomic(path, new_text)
    return manifest


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file writes them, for ruamel."""
    mapping = offset = None
    opener: int | None = None  # indent of the last `key:` line that opens a block
    for line in text.splitlines():
        body = line.split(" #", 1)[0].rstrip()
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        col = len(body) - len(body.lstrip())
        if opener is not None and col > opener:
            if body.lstrip().startswith("- "):
                offset = col - opener if offset is None else offset
            else:
                mapping = col - opener if mapping is None else mapping
        opener = col if body.endswith(":") else None
    mapping = mapping or 2
    offset = offset or 0
    return mapping, offset + 2, offset


def _assign(
    doc: dict, keys: list[str | int], value: Any, inherited: Callable[[], dict[str, Any]]
) -> None:
    """Set ``value`` at ``keys`` in a ruamel round-trip document; ``inherited()`` gives the
    manifest's data with its bases merged, to copy a list that only a base writes."""
    from ruamel.yaml.comments import CommentedMap

    cur: Any = doc
    for i, k in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        here = format_key_path(keys[: i + 1])
        if isinstance(k, int):
            _check_item(cur, keys[: i + 1])
        elif not isinstance(cur, dict):
            raise ManifestError(f"{here}: {format_key_path(keys[:i])} is not a mapping")
        elif cur.get(k) is None:
            if isinstance(nxt, int):  # a list from the base: copy it here, then edit the copy
                try:
                    base = get_path(inherited(), keys[: i + 1])
                except KeyError:
                    raise ManifestError(f"{here}: no such list in the manifest") from None
                cur[k] = _to_rt(copy.deepcopy(base), flow=False)
            else:
                cur[k] = CommentedMap()
        cur = cur[k]
    last = keys[-1]
    if isinstance(last, int):
        _check_item(cur, keys)
    elif not isinstance(cur, dict):
        raise ManifestError(
            f"{format_key_path(keys)}: {format_key_path(keys[:-1])} is not a mapping"
        )
    cur[last] = _to_rt(value, flow=True)


def _check_item(cur: Any, keys: list[str | int]) -> None:
    here, k = format_key_path(keys), keys[-1]
    if not isinstance(cur, list):
        raise ManifestError(f"{here}: {format_key_path(keys[:-1])} is not a list")
    if k >= len(cur):
        raise ManifestError(f"{here}: no such item, the list has {len(cur)}")


def _to_rt(value: Any, *, flow: bool) -> Any:
    """Plain data -> ruamel nodes; collections in flow style when ``flow``; strings quoted where
    a plain scalar would read back as something else (``yes``, ``0.5``, ``""``)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, dict):
        out = CommentedMap((k, _to_rt(v, flow=flow)) for k, v in value.items())
    elif isinstance(value, list):
        out = CommentedSeq(_to_rt(v, flow=flow) for v in value)
    elif isinstance(value, str):
        try:
            plain_ok = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain_ok = False
        return value if plain_ok else DoubleQuotedScalarString(value)
    else:
        return value
    if flow:
        out.fa.set_flow_style()
    return out


def _write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` at once: a temporary file beside it, then a rename (local);
    object stores replace an object whole on upload."""
    if is_url(path) and not path.startswith("file://"):
        with fsspec.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
        return
    local = path.removeprefix("file://")
    folder = os.path.dirname(os.path.abspath(local))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".neo-manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(local).st_mode & 0o7777)
        os.replace(tmp, local)
    except BaseException:
        os.unlink(tmp)
        raise
