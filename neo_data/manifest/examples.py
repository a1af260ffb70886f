"""The manifests that ship with the package: the demo's and the examples users start from.

They are the repository's ``manifests/`` folder, installed as the package ``neo_manifests``
(``pyproject.toml`` maps the one onto the other, so the files exist once): ``neo demo`` and
``neo manifest example NAME`` find them in an installed wheel as in a checkout, where an
editable install points the package at the folder itself. A name is a file's stem
(``pretrain`` for ``pretrain.yaml``).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import textwrap
from importlib.resources.abc import Traversable
from pathlib import Path

from neo_data.manifest.editing import manifest_yaml
from neo_data.manifest.loading import ManifestError, resolve_manifest

PACKAGE = "neo_manifests"


def _folder() -> Traversable:
    try:
        return importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"no module named {PACKAGE!r} (neo's bundled manifests): the installed neo predates "
            "it; reinstall the package (`make setup`, or `pip install -e .` in the checkout)",
            name=PACKAGE,
        ) from None


def example_names() -> list[str]:
    """The names of the packaged manifests, sorted."""
    return list(_names())


@functools.cache
def _names() -> tuple[str, ...]:
    """The package folder is listed once per process: its files do not change under it."""
    return tuple(
        sorted(
            p.name.removesuffix(".yaml") for p in _folder().iterdir() if p.name.endswith(".yaml")
        )
    )


def example_path(name: str) -> Path:
    """The file of the packaged manifest ``name`` (``pretrain`` or ``pretrain.yaml``), on disk
    beside the others, so that its ``extends`` finds its base; ManifestError naming the
    packaged manifests when there is no such one."""
    stem = name.removesuffix(".yaml")
    names = example_names()
    if stem not in names:
        raise ManifestError(
            f"no example manifest {name!r}; there are: {', '.join(names)} "
            "(`neo manifest example` lists them)"
        )
    return Path(str(_folder().joinpath(f"{stem}.yaml")))


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def example_purpose(name: str, width: int = 80) -> str:
    """The first sentence of the manifest's leading comment, shortened to ``width`` characters."""
    words = " ".join(
        line.lstrip("#").strip()
        for line in _leading_comments(example_path(name).read_text(encoding="utf-8"))
    )
    first = re.match(r"(.+?[.!?])(\s|$)", words)
    return textwrap.shorten(first.group(1) if first else words, width, placeholder=" ...")


def example_text(name: str, *, as_written: bool = False) -> str:
    """The packaged manifest ``name`` as a file that works on its own (``> my.yaml``), or with
    ``as_written`` the file exactly as it is.

    A manifest without ``extends`` comes as written, comments and all. One that extends another
    comes with its bases merged in (the merge a job makes), as YAML under the file's leading
    comment and a note on what was merged: inline comments are lost with the merge, and the
    note says how to get the files as written instead.
    """
    path = example_path(name)
    text = path.read_text(encoding="utf-8")
    if as_written:
        return text
    resolved = resolve_manifest(path)
    if len(resolved.files) == 1:
        return text
    stem = path.stem
    bases = [Path(f) for f in resolved.files[1:]]
    note = (
        f"`neo manifest example {stem}`: {path.name} with what it extends "
        f"({', '.join(b.name for b in bases)}) merged in, so that it stands alone. The file with "
        f"its comments: `neo manifest example {stem} --as-written`, beside "
        + ", ".join(f"`neo manifest example {b.stem} > {b.name}`" for b in bases)
        + "."
    )
    header = [f"# {line}" for line in textwrap.wrap(note, 96, break_on_hyphens=False)]
    return "\n".join([*header, "#", *_leading_comments(text), manifest_yaml(resolved.data)])
