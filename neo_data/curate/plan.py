"""Planning a curation: what the manifest's ``curate:`` section asks for, the digest a run's
work is stamped with, and the work units (``download.rows_per_task`` consecutive rows of one
source file, the unit of resumption and of scale)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from neo_data.curate.sources import plan_source_files
from neo_data.manifest import Manifest
from neo_data.manifest.curate import CurateSpec


class CurateError(ValueError):
    """The manifest cannot be curated: it has no ``curate:`` section."""


@dataclass(frozen=True)
class Unit:
    unit_id: str
    source: int  # index in curate.sources
    file: str
    format: str
    start: int  # rows [start, stop) of the file
    stop: int
    first_row: int  # source row of `start`
    size: int  # the file's bytes and version tag when planned (a rerun checks them)
    version: str | None


def curate_spec_of(manifest: Manifest) -> CurateSpec:
    if manifest.curate is None:
        raise CurateError(
            f"manifest {manifest.name!r} has no `curate:` section; add one with `output:` and "
            f"`sources:` (see manifests/curate_example.yaml)"
        )
    return manifest.curate


# Download settings that change speed, not output: a run may resume with other values.
_SPEED_ONLY = ("processes", "threads", "decode_pixels")


def spec_hash(spec: CurateSpec) -> str:
    """sha256 of the ``curate:`` section, without the speed-only settings.

    ``block_private_addresses`` enters only when off (on, the default, hashes as before it
    existed). The download engine enters as each source's effective engine, and only when one is not
    ``neo``: outputs written before ``engine`` existed keep their hash (a rerun still resumes
    or skips them), and another engine is another curation (reasons and lineage differ)."""
    canon = spec.model_dump(mode="json")
    for download in [canon["download"], *(s["download"] for s in canon["sources"])]:
        for key in (*_SPEED_ONLY, "engine"):
            (download or {}).pop(key, None)
        if (download or {}).get("block_private_addresses") is True:
            download.pop("block_private_addresses")  # the default keeps older outputs' hash
    engines = [spec.source_download(s).engine for s in spec.sources]
    if set(engines) != {"neo"}:
        canon["source_engines"] = engines
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def plan_units(spec: CurateSpec) -> list[Unit]:
    """Every source file cut into units of the source's ``rows_per_task`` rows, in source
    order; ``<unit>`` is ``<source>-<file number>-<chunk>``."""
    units = []
    for si, source in enumerate(spec.sources):
        per_task = spec.source_download(source).rows_per_task
        for fi, sf in enumerate(plan_source_files(source)):
            for ci, start in enumerate(range(0, sf.num_rows, per_task)):
                stop = min(start + per_task, sf.num_rows)
                uid = f"{source.name}-{fi:04d}-{ci:05d}"
                units.append(Unit(uid, si, sf.url, sf.format, start, stop, sf.first_row + start,
                                  sf.size, sf.version))  # fmt: skip
    return units
