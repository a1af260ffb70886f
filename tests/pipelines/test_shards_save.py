"""``neo shards show --save-images`` writes inside its folder whatever a shard's ``pack_id``
holds (a shard is data, possibly hostile: ``../`` or ``/`` in an id must not pick the path)."""

from __future__ import annotations

import pytest

from pipelines.shards_cmd import save_images
from tests.helpers import image_bytes


@pytest.mark.parametrize(
    "pack_id", ["../../escaped", "/tmp/abs", "..", "a/../../b", "low-00000-0000-0001", "\x00x"]
)
def test_save_images_stays_in_its_folder(tmp_path, pack_id):
    png = image_bytes(32, 32, "PNG")
    pack = {"pack_id": pack_id, "images": [png, png], "cu_seqlens": [0, 4]}
    out = tmp_path / "out" / "imgs"
    written = save_images(pack, str(out))
    assert len(written) == 2
    inside = sorted(p for p in (tmp_path).rglob("*") if p.is_file())
    assert inside == sorted(out / p.rsplit("/", 1)[-1] for p in written)
    assert all(p.read_bytes() == png for p in inside)
    if pack_id == "low-00000-0000-0001":  # an ordinary id keeps its name
        assert [p.name for p in inside] == [f"{pack_id}-img000.png", f"{pack_id}-img001.png"]
