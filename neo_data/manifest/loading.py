"""Reading manifests: YAML with the line of every value, ``extends`` chains, ``--set`` overrides.

Errors name the file, the line, the YAML path and the bad value, and say what is allowed::

    manifests/demo.yaml:14: pack.buckets[1].max_image_tokens: -3 -- Input should be greater than 0

Unknown keys are rejected (a typo never silently falls back to a default). YAML is loaded with
``yaml.safe_load`` semantics only.

A manifest may build on another: ``extends: base.yaml`` (relative to the extending file, or a
URL of an object store; only ``.yaml`` / ``.yml`` files, see ``check_extends_target``) deep-merges the file over its base -- mappings merge key by key, lists and scalars replace --
and chains are allowed. Errors point at the file and line where the bad value was written, base
or child; ``content_hash`` covers the resolved manifest, so two files that resolve alike hash
alike. ``--set KEY=VALUE`` overrides (``parse_overrides``) apply after ``extends``; key paths
are spelled ``pack.buckets[1].max_image_tokens``.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml
from pydantic import ValidationError

from neo_data.manifest.model import Manifest


class ManifestError(ValueError):
    """A manifest is not valid; the message lists every problem with file, line and path."""


# --- where each value was written ------------------------------------------------------------


@dataclass
class _Src:
    """Where a value of the resolved manifest was written (file and 1-based line), and the same
    for the values inside it: errors point at the file of the ``extends`` chain that set a value."""

    where: str
    line: int | None
    children: dict[str | int, _Src] = field(default_factory=dict)
    is_map: bool = False


def _src_of(node: yaml.Node, where: str) -> _Src:
    src = _Src(where, node.start_mark.line + 1, is_map=isinstance(node, yaml.MappingNode))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            src.children[k.value] = _src_of(v, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            src.children[i] = _src_of(v, where)
    return src


def _merge(base: Any, over: Any) -> Any:
    """Deep merge for ``extends``: mappings merge key by key; lists and scalars replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def _merge_src(base: _Src, over: _Src) -> _Src:
    """The same merge as `_merge`, over the source positions."""
    if base.is_map and over.is_map:
        children = dict(base.children)
        for k, v in over.children.items():
            children[k] = _merge_src(base.children[k], v) if k in base.children else v
        return _Src(over.where, over.line, children, is_map=True)
    return over


# --- reading and resolving `extends` ------------------------------------------------------------


@dataclass
class ResolvedManifest:
    """A manifest with its ``extends`` chain merged, before validation.

    ``data`` holds only what the files say (no defaults); ``files`` lists the chain, the named
    file first and its most basic ancestor last.
    """

    data: dict[str, Any]
    files: list[str]
    src: _Src

    def validate(self) -> Manifest:
        try:
            return Manifest.model_validate(self.data)
        except ValidationError as e:
            lines = [_format_error(err, self.src) for err in e.errors()]
            raise ManifestError(
                f"{self.files[0]}: {len(lines)} problem(s)\n" + "\n".join(lines)
            ) from None


def read_manifest_text(path: str, referenced_at: str | None = None) -> str:
    """The text of the manifest at ``path`` (local or fsspec URL); ManifestError if there is none
    (``referenced_at``: the ``file:line`` of the ``extends`` that names it)."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError as e:
        at = f"{referenced_at}: extends: " if referenced_at else ""
        raise ManifestError(f"{at}{path}: no such manifest") from e


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://...``, ``file://...``) rather than a local path."""
    return "://" in path


MANIFEST_SUFFIXES = (".yaml", ".yml")
# Where a base manifest may live: local files and object stores. Web URLs are not fetched: a
# manifest from elsewhere could make a job (on a cluster node) request cloud metadata or an
# internal service, and print what came back in an error.
EXTENDS_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "memory")


def check_extends_target(ref: str, at: str) -> None:
    """``extends`` names a base manifest: a ``.yaml`` / ``.yml`` file on a local disk or an object
    store. Anything else is refused before it is read -- a credentials file, a dotenv or a key
    named by mistake (or by a hostile manifest) would otherwise be parsed and quoted in the
    errors."""
    if is_url(ref) and ref.split("://", 1)[0].lower() not in EXTENDS_SCHEMES:
        raise ManifestError(
            f"{at}: extends: {ref!r} is not fetched (a base manifest is a local file or on an "
            f"object store: {', '.join(s + '://' for s in EXTENDS_SCHEMES)})"
        )
    if not ref.lower().endswith(MANIFEST_SUFFIXES):
        raise ManifestError(
            f"{at}: extends: {ref!r} is not a manifest file (expected a .yaml or .yml file; "
            "other files are never read)"
        )


def _base_path(child: str, ref: str) -> str:
    """``ref`` (the value of ``extends``) resolved against the file that names it."""
    if is_url(ref) or posixpath.isabs(ref):
        return ref
    if is_url(child):
        proto, _, rest = child.partition("://")
        return f"{proto}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), ref))}"
    return os.path.normpath(os.path.join(os.path.dirname(child), ref))


def _identity(path: str) -> str:
    return path if is_url(path) else os.path.realpath(path)


def _parse_doc(text: str, where: str) -> tuple[dict[str, Any], _Src]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # the position and the problem, never a quoted line
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ManifestError(f"{at}: not valid YAML: {problem}") from None
    if not isinstance(data, dict) or node is None:
        got = type(data).__name__
        raise ManifestError(f"{where}: a manifest is a mapping of keys, got {got}")
    return data, _src_of(node, where)


def resolve_text(text: str, where: str, _chain: tuple[str, ...] = ()) -> ResolvedManifest:
    """Parse ``text`` (the manifest at ``where``) and merge the chain of ``extends`` under it.

    ``extends`` names one base manifest, relative to the extending file or as a URL; the base may
    extend another. A file met twice along the chain is a cycle and refused.
    """
    chain = (*_chain, _identity(where))
    data, src = _parse_doc(text, where)
    if "extends" not in data:
        return ResolvedManifest(data, [where], src)
    ref = data.pop("extends")
    ref_src = src.children.pop("extends")
    at = f"{where}:{ref_src.line}"
    if not isinstance(ref, str) or not ref.strip():
        raise ManifestError(
            f"{at}: extends: {ref!r} -- expected the path or URL of a base manifest"
        )
    check_extends_target(ref, at)
    base = _base_path(where, ref)
    if _identity(base) in chain:
        loop = " -> ".join([*chain, _identity(base)])
        raise ManifestError(f"{at}: extends: {ref!r} makes a cycle: {loop}")
    parent = resolve_text(read_manifest_text(base, referenced_at=at), base, chain)
    return ResolvedManifest(
        _merge(parent.data, data), [where, *parent.files], _merge_src(parent.src, src)
    )


def resolve_manifest(path: str | Path) -> ResolvedManifest:
    """Read the manifest at ``path`` (local or any fsspec URL) and merge its ``extends`` chain."""
    path = str(path)
    return resolve_text(read_manifest_text(path), path)


def load_manifest(path: str | Path, overrides: dict[str, Any] | None = None) -> Manifest:
    """Read, resolve (``extends``), override and validate a manifest (local path or fsspec URL)."""
    path = str(path)
    return parse_manifest(read_manifest_text(path), path, overrides)


def parse_manifest(text: str, where: str, overrides: dict[str, Any] | None = None) -> Manifest:
    """Validate manifest ``text``; ``where`` names it in errors and anchors relative ``extends``.

    ``overrides`` map key paths (``pack.seq_len``, ``pack.buckets[1].name``) to values, applied
    after ``extends``; errors in them are reported as ``--set KEY``.
    """
    resolved = resolve_text(text, where)
    for dotted, value in (overrides or {}).items():
        keys = parse_key_path(dotted)
        set_path(resolved.data, keys, value)
        _mark_override(resolved.src, keys, f"--set {dotted}")
    return resolved.validate()


# --- key paths ---------------------------------------------------------------------------------

_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)")


def parse_key_path(dotted: str) -> list[str | int]:
    """``pack.buckets[1].max_image_tokens`` -> ``["pack", "buckets", 1, "max_image_tokens"]``."""
    keys: list[str | int] = []
    for part in dotted.split("."):
        m = _KEY_PART.fullmatch(part)
        if m is None:
            raise ManifestError(
                f"{dotted!r}: not a key path (expected keys joined by dots, list items as [N], "
                "e.g. pack.buckets[1].max_image_tokens)"
            )
        keys.append(m.group(1))
        keys.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return keys


def format_key_path(keys: list[str | int] | tuple) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def get_path(data: Any, keys: list[str | int]) -> Any:
    """The value at ``keys``; KeyError naming the first missing part."""
    cur = data
    for i, k in enumerate(keys):
        ok = (isinstance(cur, dict) and k in cur) or (
            isinstance(cur, list) and isinstance(k, int) and k < len(cur)
        )
        if not ok:
            raise KeyError(format_key_path(keys[: i + 1]))
        cur = cur[k]
    return cur


def set_path(data: dict, keys: list[str | int], value: Any) -> None:
    """Set ``value`` at ``keys``, creating missing mappings; list items must exist."""
    cur: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        where = format_key_path(keys[: i + 1])
        if isinstance(k, int):
            if not isinstance(cur, list) or k >= len(cur):
                size = f"a list of {len(cur)}" if isinstance(cur, list) else "not a list"
                raise ManifestError(
                    f"{where}: no such list item ({where[: where.rindex('[')]} is {size})"
                )
        elif not isinstance(cur, dict):
            raise ManifestError(f"{where}: {format_key_path(keys[:i])} is not a mapping")
        elif not last and not isinstance(cur.get(k), dict | list):
            cur[k] = {}
        if last:
            cur[k] = value
        else:
            cur = cur[k]


def _mark_override(src: _Src, keys: list[str | int], where: str) -> None:
    for k in keys[:-1]:
        src = src.children.setdefault(k, _Src(where, None, is_map=True))
    src.children[keys[-1]] = _Src(where, None)


# --- error messages ----------------------------------------------------------------------------


def _format_error(err: dict, root: _Src) -> str:
    loc = [p for p in err["loc"] if p not in ("function-after",)]
    src = _locate(root, loc)
    value = err.get("input")
    shown = "" if isinstance(value, dict | list) else f"{value!r} -- "
    msg = err["msg"]
    if err["type"] == "extra_forbidden":  # the key only: its value may be anything, a secret too
        shown, msg = "", "unknown key (check the spelling; `neo manifest schema` lists the keys)"
    at = f"{src.where}:{src.line}" if src.line else src.where
    return f"  {at}: {format_key_path(loc) or '(top level)'}: {shown}{msg}"


def _locate(src: _Src, loc: list) -> _Src:
    """The deepest written value along ``loc`` (a missing key points at its mapping)."""
    for p in loc:
        nxt = src.children.get(p)
        if nxt is None:
            break
        src = nxt
    return src


# --- `--set` options ---------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (the ``--set`` options) as overrides; values are YAML scalars or
    flow collections (``--set data.curated=[a, b]``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out
