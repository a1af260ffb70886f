"""Manifests: the YAML files users edit, validated at the boundary with pydantic.

Errors name the file, the line, the YAML path and the bad value, and say what is allowed::

    manifests/demo.yaml:14: pack.buckets[1].max_image_tokens: -3 -- Input should be greater than 0

Unknown keys are rejected (a typo never silently falls back to a default). YAML is loaded with
``yaml.safe_load`` semantics only.

A manifest may build on another: ``extends: base.yaml`` (relative to the extending file, or a
URL) deep-merges the file over its base -- mappings merge key by key, lists and scalars replace --
and chains are allowed. Errors point at the file and line where the bad value was written, base
or child; ``content_hash`` covers the resolved manifest, so two files that resolve alike hash
alike. ``edit_manifest`` changes values in place (comments and layout kept) and refuses to write
a manifest that does not validate.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
import yaml
from pydantic import Field, ValidationError, model_validator

from neo_data.encoding.images import ImageEncoding
from neo_data.manifest.base import Strict as _Strict
from neo_data.manifest.curate import CurateSpec
from neo_data.manifest.recaption import RecaptionSpec
from neo_data.manifest.train import TrainSpec

Stage = Literal["pretrain", "midtrain", "sft"]

# Pixel budgets per stage (architecture doc, section 5).
STAGE_PIXELS: dict[str, tuple[int, int]] = {
    "pretrain": (256 * 256, 2048 * 2048),
    "midtrain": (256 * 256, 4096 * 4096),
    "sft": (256 * 256, 4096 * 4096),
}
STAGE_SEQ_LEN = {"pretrain": 16_384, "midtrain": 32_768, "sft": 32_768}


class Bucket(_Strict):
    """Samples whose largest image has at most ``max_image_tokens`` tokens (32x32 px each)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    max_image_tokens: Annotated[int, Field(gt=0)]


class ImageEncodingSpec(_Strict):
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: Annotated[int, Field(ge=1, le=100)] = 95
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:4:4"  # JPEG chroma

    def to_encoding(self) -> ImageEncoding:
        return ImageEncoding(self.format, self.quality, self.subsampling)


class PackSpec(_Strict):
    """How curated samples become packs."""

    tokenizer: str = "builtin:qwen3"
    seq_len: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_image_tokens: Annotated[int | None, Field(gt=0)] = None  # per pack; default seq_len
    min_pixels: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_pixels: Annotated[int | None, Field(gt=0)] = None
    max_decode_pixels: Annotated[int, Field(gt=0)] = 178_956_970  # Pillow's bomb limit x2
    buckets: list[Bucket] = Field(
        default_factory=lambda: [
            Bucket(name="low", max_image_tokens=256),
            Bucket(name="mid", max_image_tokens=1024),
            Bucket(name="high", max_image_tokens=16384),
        ],
        min_length=1,
    )
    # Fraction of text-only samples among the packed samples (the paper: text:multimodal 3:7).
    text_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    caption_prompt: str = ""  # user text beside the image of a caption sample
    caption_choice: Literal["first", "original", "recaption", "mix"] = "first"
    recaption_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # with caption_choice: mix
    image_encoding: ImageEncodingSpec = ImageEncodingSpec()
    packs_per_shard: Annotated[int, Field(gt=0)] = 64
    # Samples one worker encodes and packs together (memory: about this many resized images).
    window_samples: Annotated[int, Field(gt=0)] = 8192
    seed: int = 0

    @model_validator(mode="after")
    def _buckets_increase(self) -> PackSpec:
        bounds = [b.max_image_tokens for b in self.buckets]
        if bounds != sorted(set(bounds)):
            raise ValueError(
                f"buckets must have strictly increasing max_image_tokens, got {bounds}"
            )
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"bucket names must be unique, got {names}")
        return self


class DataSpec(_Strict):
    curated: list[str] = Field(min_length=1)  # files, directories or globs; local or s3://
    packed: str  # output directory of the packed dataset


class Manifest(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    stage: Stage = "pretrain"
    data: DataSpec
    pack: PackSpec = PackSpec()
    # Sections of the other jobs; each job refuses a manifest without its section.
    curate: CurateSpec | None = None
    recaption: RecaptionSpec | None = None
    train: TrainSpec | None = None

    @model_validator(mode="after")
    def _budgets(self) -> Manifest:
        pack = self.resolved_pack()
        if pack.min_pixels > pack.max_pixels:
            raise ValueError(
                f"pack.min_pixels {pack.min_pixels} > pack.max_pixels {pack.max_pixels}"
            )
        need = pack.max_pixels // 1024
        if pack.buckets[-1].max_image_tokens < need:
            raise ValueError(
                f"the last bucket ({pack.buckets[-1].name}, max_image_tokens "
                f"{pack.buckets[-1].max_image_tokens}) must cover max_pixels {pack.max_pixels} "
                f"= {need} image tokens"
            )
        return self

    def resolved_pack(self) -> PackSpec:
        """``pack`` with the stage defaults filled in."""
        lo, hi = STAGE_PIXELS[self.stage]
        seq_len = self.pack.seq_len or STAGE_SEQ_LEN[self.stage]
        return self.pack.model_copy(
            update={
                "seq_len": seq_len,
                "max_image_tokens": self.pack.max_image_tokens or seq_len,
                "min_pixels": self.pack.min_pixels or lo,
                "max_pixels": self.pack.max_pixels or hi,
            }
        )

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults and stage defaults filled in, as JSON-able data."""
        return self.model_copy(update={"pack": self.resolved_pack()}).model_dump(mode="json")

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved manifest (recorded in shard indexes)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()


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


def _read(path: str, referenced_at: str | None = None) -> str:
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError as e:
        at = f"{referenced_at}: extends: " if referenced_at else ""
        raise ManifestError(f"{at}{path}: no such manifest") from e


def _is_url(path: str) -> bool:
    return "://" in path


def _base_path(child: str, ref: str) -> str:
    """``ref`` (the value of ``extends``) resolved against the file that names it."""
    if _is_url(ref) or posixpath.isabs(ref):
        return ref
    if _is_url(child):
        proto, _, rest = child.partition("://")
        return f"{proto}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), ref))}"
    return os.path.normpath(os.path.join(os.path.dirname(child), ref))


def _identity(path: str) -> str:
    return path if _is_url(path) else os.path.realpath(path)


def _parse_doc(text: str, where: str) -> tuple[dict[str, Any], _Src]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{where}: not valid YAML: {e}") from e
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
    base = _base_path(where, ref)
    if _identity(base) in chain:
        loop = " -> ".join([*chain, _identity(base)])
        raise ManifestError(f"{at}: extends: {ref!r} makes a cycle: {loop}")
    parent = resolve_text(_read(base, referenced_at=at), base, chain)
    return ResolvedManifest(
        _merge(parent.data, data), [where, *parent.files], _merge_src(parent.src, src)
    )


def resolve_manifest(path: str | Path) -> ResolvedManifest:
    """Read the manifest at ``path`` (local or any fsspec URL) and merge its ``extends`` chain."""
    path = str(path)
    return resolve_text(_read(path), path)


def load_manifest(path: str | Path, overrides: dict[str, Any] | None = None) -> Manifest:
    """Read, resolve (``extends``), override and validate a manifest (local path or fsspec URL)."""
    path = str(path)
    return parse_manifest(_read(path), path, overrides)


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
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `neo manifest schema` lists the keys)"
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


# --- schema, diff ------------------------------------------------------------------------------


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

    text = _read(path)
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
    if _is_url(path) and not path.startswith("file://"):
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
