"""neo works installed, not only from the checkout: a wheel carries every package, the package
data (FORMAT.md, the browser's templates, the bundled manifests) and runs from another folder; an
editable install points the bundled manifests at the repository's ``manifests/`` folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from neo_data.manifest import load_manifest
from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
SOURCES = ("pyproject.toml", "README.md", "neo_data", "neo_model", "pipelines", "manifests")
# Where the packages come from, and the demo's manifests as `neo demo` finds them.
IMPORTED = """\
import json, neo_data, pipelines
from neo_data.manifest import example_path, load_manifest
from pipelines.demo import STAGE_MANIFESTS
demo = {str(example_path(n)): load_manifest(example_path(n)).name for n in STAGE_MANIFESTS}
print(json.dumps({"packages": [neo_data.__file__, pipelines.__file__], "demo": demo}))
"""


def test_every_package_folder_is_listed():
    """pyproject.toml names its packages one by one (``find`` cannot map manifests/ to
    neo_manifests): a new folder under neo_data, neo_model or pipelines must join the list."""
    folders = {
        ".".join(d.relative_to(REPO).parts)
        for top in ("neo_data", "neo_model", "pipelines")
        for d in [REPO / top, *(REPO / top).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())
    }
    assert sorted(PYPROJECT["packages"]) == sorted(folders | {"neo_manifests"})
    assert PYPROJECT["package-dir"] == {"neo_manifests": "manifests"}


def _copy_sources(dest: Path) -> Path:
    """The files a build reads, copied, so that building leaves the checkout as it was."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_manifest_commands(tmp_path):
    src = _copy_sources(tmp_path / "src")
    env = _clean_env()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("neo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = sorted((REPO / "manifests").glob("*.yaml"))
    assert {"base.yaml", "pretrain.yaml", "demo.yaml"} <= {p.name for p in bundled}
    for path in bundled:
        assert f"neo_manifests/{path.name}" in names
    assert {
        "neo_data/format/FORMAT.md",
        "neo_data/browser/templates/base.html",
        "neo_data/browser/static/style.css",
    } <= names
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)

    # From another folder, the installed copy wins over the checkout's editable install.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(PYTHONPATH=str(site))
    imported = json.loads(_run([sys.executable, "-c", IMPORTED], elsewhere, env))
    assert all(Path(f).is_relative_to(site) for f in imported["packages"]), imported
    assert sorted(imported["demo"].values()) == ["demo", "demo-midtrain", "demo-sft"]
    assert all(Path(f).is_relative_to(site / "neo_manifests") for f in imported["demo"]), imported

    cli = [sys.executable, "-m", "pipelines.cli", "manifest"]
    listing = _run([*cli, "example"], elsewhere, env)
    assert "pretrain " in listing and "recaption_example " in listing
    (elsewhere / "my.yaml").write_text(_run([*cli, "example", "pretrain"], elsewhere, env))
    assert "my.yaml: ok (neo-pretrain, stage pretrain" in _run(
        [*cli, "validate", "my.yaml"], elsewhere, env
    )
    assert (
        load_manifest(elsewhere / "my.yaml").content_hash()
        == load_manifest(REPO / "manifests" / "pretrain.yaml").content_hash()
    )


@pytest.mark.slow
def test_an_editable_install_points_at_the_manifests_folder(tmp_path):
    """The editable wheel setuptools builds (what ``pip install -e .`` installs), put on the path
    of a Python that does not read this environment's own editable install."""
    src = _copy_sources(tmp_path / "src")
    build = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.build_editable(sys.argv[1]))"
    )
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = _run([sys.executable, "-c", build, str(dist)], src, _clean_env()).split()[-1]
    site = tmp_path / "site"
    zipfile.ZipFile(dist / wheel).extractall(site)

    # -S: no site-packages (and no .pth) of this environment but the dependencies, added after
    # the editable finder so that it is the one imported.
    prelude = (
        f"import site, sys; site.addsitedir({str(site)!r}); "
        f"sys.path.append({sysconfig.get_path('purelib')!r})\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run([sys.executable, "-S", "-c", prelude + IMPORTED], elsewhere, _clean_env())
    imported = json.loads(out)
    assert all(Path(f).is_relative_to(src) for f in imported["packages"]), imported
    assert sorted(imported["demo"].values()) == ["demo", "demo-midtrain", "demo-sft"]
    assert all(Path(f).parent == src / "manifests" for f in imported["demo"]), imported
