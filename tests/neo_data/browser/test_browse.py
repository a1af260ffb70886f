"""The shard browser's views and its HTTP endpoints, on a real packed dataset (local and S3).

The dataset is the demo generator's rows plus a few tricky ones (HTML in a caption, the string
``<|im_end|>`` in a conversation, a corrupt image) packed by the real pack job; the endpoints are
called with a plain HTTP client against the server on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neo_data.browser import layout as thw
from neo_data.browser.server import BackgroundServer
from neo_data.browser.views import (
    Turn,
    find_datasets,
    image_mime,
    read_rejected,
    sample_turns,
    source_counts,
    token_rows,
)
from neo_data.encoding.encode import SampleEncoder
from neo_data.encoding.tokens import IGNORE_INDEX, load_tokenizer
from neo_data.format.schema import INDEX_NAME
from neo_data.format.shards import PackedDataset
from neo_data.manifest import load_manifest
from neo_data.pack.job import encode_settings, run_pack
from neo_data.synthetic.dataset import write_demo_dataset
from tests.helpers import REPO, caption_row, conversation_row, image_bytes, write_curated

pytestmark = pytest.mark.slow

DEMO_MANIFEST = REPO / "manifests" / "demo.yaml"
XSS = "<script>alert('x')</script> & <b>bold</b>"
SECRET = "this file is outside every dataset index"


def tricky_rows() -> list[dict]:
    return [
        caption_row(0, XSS, [image_bytes(200, 120, "JPEG")], source="tricky"),
        conversation_row(
            1,
            [("user", "<image>\nIs <|im_end|> text here?"), ("assistant", "Yes, <|im_end|> is.")],
            [image_bytes(96, 160, "PNG", (20, 90, 200))],
            source="tricky",
        ),
        caption_row(2, "broken", [b"\xff\xd8\xff garbage"], source="tricky"),
    ]


def _manifest(root: Path):
    return load_manifest(
        DEMO_MANIFEST,
        overrides={"data.curated": [str(root / "curated")], "data.packed": str(root / "packed")},
    )


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> str:
    """A packed dataset with two buckets, three shards' worth of sources and two drop reasons."""
    root = tmp_path_factory.getbasetemp() / "browse-dataset"
    packed = root / "packed"
    if not (packed / INDEX_NAME).exists():
        write_demo_dataset(str(root / "curated"), captions=24, conversations=12, texts=30)
        write_curated(str(root / "curated" / "tricky.parquet"), tricky_rows())
        run_pack(_manifest(root))
        (root / "secret.txt").write_text(SECRET)
    return str(packed)


@pytest.fixture(scope="module")
def server(dataset):
    with BackgroundServer(dataset) as s:
        yield s


def get(url: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) without raising on 4xx/5xx and without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def html(server, path: str) -> str:
    status, headers, body = get(server.base_url + path)
    assert status == 200, (path, status, body[:300])
    assert headers["Content-Type"].startswith("text/html")
    return body.decode()


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------


def test_find_datasets_below_a_prefix(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "team" / "a" / "packed")
    shutil.copytree(dataset, tmp_path / "team" / "b")
    (tmp_path / "team" / "c" / "_work").mkdir(parents=True)  # a pack job that has not finished
    shutil.copytree(dataset, tmp_path / "team" / "x" / "y" / "z" / "w" / "too-deep")
    (tmp_path / "team" / "d").mkdir()
    (tmp_path / "team" / "d" / INDEX_NAME).write_text('{"format": "neo.packed", "schema_')
    found = find_datasets(str(tmp_path / "team"), max_depth=3)
    assert [e.rel for e in found] == ["a/packed", "b", "c", "d"]
    assert found[0].index == PackedDataset(dataset).index
    assert found[2].index is None and "unfinished" in found[2].problem
    assert found[3].index is None and "unreadable index.json" in found[3].problem
    # a dataset root (or its index) lists itself; the search never enters a dataset's folders
    assert [e.rel for e in find_datasets(dataset)] == ["."]
    assert [e.url for e in find_datasets(f"{dataset}/{INDEX_NAME}")] == [dataset]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        find_datasets(str(tmp_path / "nowhere"))


def test_sample_text_is_what_the_encoder_rendered(dataset):
    """Decoded turns equal the turns the packer rendered from each source row (the peer)."""
    ds = PackedDataset(dataset)
    tok = load_tokenizer(ds.index["tokenizer"]["spec"])
    manifest = _manifest(Path(dataset).parent)
    enc = SampleEncoder(tok, encode_settings(manifest))
    sources = {
        r["sample_id"]: r for r in pq.read_table(str(Path(dataset).parent / "curated")).to_pylist()
    }
    seen = set()
    for pack in ds.iter_packs():
        for k, sid in enumerate(pack["sample_ids"]):
            row = sources[sid]
            got = sample_turns(pack, k, tok)
            if row["kind"] == "text":
                want = [Turn("text", row["text"])]
            elif row["kind"] == "caption":
                user = "<image>\n" * len(row["images"]) + enc.s.caption_prompt
                want = [Turn("user", user), Turn("assistant", enc.choose_caption(row).strip())]
            else:
                want = [Turn(t["role"], t["content"]) for t in row["conversation"]]
            assert got == want, sid
            seen.add(row["kind"])
    assert seen == {"text", "caption", "conversation"}
    assert "tricky-000001" in {sid for p in ds.iter_packs() for sid in p["sample_ids"]}


def test_token_rows_collapse_images_but_keep_every_text_token(dataset):
    ds = PackedDataset(dataset)
    tok = load_tokenizer(ds.index["tokenizer"]["spec"])
    pack = ds.read_pack(0, 0)
    rows = token_rows(pack, tok)
    full = token_rows(pack, tok, collapse_images=False)
    assert [r["pos"] for r in full] == list(range(pack["num_tokens"]))
    assert len(rows) + sum(r["skipped"] for r in rows) == pack["num_tokens"]
    text_positions = [i for i, o in enumerate(pack["image_ordinal"]) if o < 0]
    assert [r["pos"] for r in rows if r["image"] is None] == text_positions
    for r in full:
        assert (r["label"] is None) == (pack["labels"][r["pos"]] == IGNORE_INDEX)
        assert (r["t"], r["h"], r["w"]) == (
            pack["t_index"][r["pos"]],
            pack["h_index"][r["pos"]],
            pack["w_index"][r["pos"]],
        )


def test_layout_has_one_cell_per_token_and_images_as_their_grids(dataset):
    ds = PackedDataset(dataset)
    for i in range(len(ds.shards)):
        pack = ds.read_pack(i, 0)
        lay = thw.layout(pack)
        assert sorted(c.pos for c in lay.cells) == list(range(pack["num_tokens"]))
        assert len({(c.x, c.y) for c in lay.cells}) == len(lay.cells), "cells overlap"
        assert all(0 <= c.x < lay.width and 0 <= c.y < lay.height for c in lay.cells)
        by_image: dict[int, list] = {}
        for c in lay.cells:
            if c.image >= 0:
                by_image.setdefault(c.image, []).append(c)
        assert len(by_image) == len(pack["images"])
        for o, cells in by_image.items():
            rows, cols = pack["image_heights"][o] // 32, pack["image_widths"][o] // 32
            x0, y0 = min(c.x for c in cells), min(c.y for c in cells)
            assert {(c.x - x0, c.y - y0) for c in cells} == {
                (w * thw.CELL, h * thw.CELL) for h in range(rows) for w in range(cols)
            }
            assert {(c.h, c.w) for c in cells} == {(h, w) for h in range(rows) for w in range(cols)}
            assert len({c.t for c in cells}) == 1  # one T per image
        # samples never share a line
        spans = {}
        for c in lay.cells:
            lo, hi = spans.get(c.sample, (c.y, c.y))
            spans[c.sample] = (min(lo, c.y), max(hi, c.y))
        ordered = [spans[k] for k in sorted(spans)]
        assert all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False))


def test_sources_and_rejected_account_for_every_input_row(dataset):
    ds = PackedDataset(dataset)
    rejected = read_rejected(ds)
    counts = source_counts(ds, rejected)
    curated = pq.read_table(str(Path(dataset).parent / "curated"), columns=["source"])
    want = curated["source"].value_counts().to_pylist()
    assert {r["values"]: r["counts"] for r in want} == {s: c.total for s, c in counts.items()}
    assert counts["tricky"].dropped == {"image_decode_error": 1}
    dropped = ds.index["totals"]["dropped"]
    assert sum(sum(c.dropped.values()) for c in counts.values()) == sum(dropped.values())
    assert rejected.num_rows == sum(dropped.values())


def test_image_mime_sniffs_the_bytes():
    assert image_mime(image_bytes(8, 8, "JPEG")) == ("image/jpeg", "jpg")
    assert image_mime(image_bytes(8, 8, "PNG")) == ("image/png", "png")
    assert image_mime(image_bytes(8, 8, "WEBP")) == ("image/webp", "webp")
    assert image_mime(b"not an image") == ("application/octet-stream", "bin")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def test_overview_shows_totals_buckets_drop_reasons_and_sources(server, dataset):
    index = PackedDataset(dataset).index
    status, headers, _ = get(server.base_url + "/")
    assert status == 302 and headers["Location"] == "/ds/0/"  # one dataset: straight to it
    page = html(server, "/ds/0/")
    t = index["totals"]
    for n in (t["samples_in"], t["samples"], t["packs"], t["tokens"]):
        assert f"{n:,}" in page
    for b in index["buckets"]:
        assert f"<td>{b['name']}</td>" in page
    for reason in t["dropped"]:
        assert f"?reason={reason}" in page
    for source in ("demo-captions", "demo-conversations", "demo-text", "tricky"):
        assert f"<td>{source}</td>" in page
    assert "<script" not in page


def test_every_page_is_served_with_a_strict_policy(server):
    status, headers, _ = get(server.base_url + "/ds/0/")
    assert status == 200
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "http" not in html(server, "/ds/0/").split("</head>")[0].replace('href="/static', ""), (
        "no external resource in the head"
    )
    status, _, _ = get(server.base_url + "/static/style.css")
    assert status == 200


def test_shard_list_and_one_shards_packs_match_the_files(server, dataset):
    ds = PackedDataset(dataset)
    page = html(server, "/ds/0/shards")
    for i, s in enumerate(ds.shards):
        assert f'href="/ds/0/shard/{i}">{s["path"]}</a>' in page
        shard_page = html(server, f"/ds/0/shard/{i}")
        with fsspec.open(f"{dataset}/{s['path']}", "rb") as f:
            ids = pq.read_table(f, columns=["pack_id"])["pack_id"].to_pylist()
        links = re.findall(rf'href="/ds/0/shard/{i}/pack/(\d+)">([^<]+)</a>', shard_page)
        assert [(int(p), pid) for p, pid in links] == list(enumerate(ids))


def test_pack_page_shows_images_samples_tokens_and_the_layout(server, dataset):
    ds = PackedDataset(dataset)
    shard = next(i for i, s in enumerate(ds.shards) if s["images"])
    pack = ds.read_pack(shard, 0)
    page = html(server, f"/ds/0/shard/{shard}/pack/0")
    assert page.count('<rect class="tok') == pack["num_tokens"]
    assert len(re.findall(r'<figure id="image-\d+">', page)) == len(pack["images"])
    for o, (h, w) in enumerate(zip(pack["image_heights"], pack["image_widths"], strict=True)):
        assert f"#{o} · {w}×{h} px · {h // 32}×{w // 32} tokens" in page
    for sid in pack["sample_ids"]:
        assert sid in page
    tok = load_tokenizer(ds.index["tokenizer"]["spec"])
    for k in range(len(pack["sample_ids"])):
        for turn in sample_turns(pack, k, tok):
            assert f'<span class="role">{turn.role}</span>' in page


def test_pack_text_is_escaped(server, dataset):
    ds = PackedDataset(dataset)
    where = [
        (i, p)
        for i, s in enumerate(ds.shards)
        for p in range(s["packs"])
        if "tricky-000000" in ds.read_pack(i, p)["sample_ids"]
    ]
    assert len(where) == 1
    page = html(server, "/ds/0/shard/{}/pack/{}".format(*where[0]))
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script" not in page and "<b>bold" not in page


def test_images_are_the_shard_bytes_with_their_type(server, dataset):
    ds = PackedDataset(dataset)
    shard = next(i for i, s in enumerate(ds.shards) if s["images"])
    pack = ds.read_pack(shard, 0)
    for o in (0, len(pack["images"]) - 1):
        status, headers, body = get(server.base_url + f"/ds/0/shard/{shard}/pack/0/image/{o}")
        assert status == 200
        assert body == pack["images"][o]
        with Image.open(io.BytesIO(body)) as im:
            assert headers["Content-Type"] == Image.MIME[im.format]
            assert im.size == (pack["image_widths"][o], pack["image_heights"][o])


def test_rejected_view_lists_rows_by_reason(server, dataset):
    ds = PackedDataset(dataset)
    dropped = ds.index["totals"]["dropped"]
    page = html(server, "/ds/0/rejected")
    for reason, n in dropped.items():
        assert f"{reason} ({n:,})" in page
    assert 'class="problem"' not in page  # the files agree with the index
    page = html(server, "/ds/0/rejected?reason=image_decode_error")
    assert "tricky-000002" in page and "images[0]" in page
    assert "text_over_ratio</td>" not in page
    page = html(server, "/ds/0/rejected?reason=text_over_ratio&offset=2")
    rows = re.findall(r"<td>demo-text-[\d-]+</td>", page)  # sample ids
    assert len(rows) == dropped["text_over_ratio"] - 2
    assert get(server.base_url + "/ds/0/rejected?reason=no_such_reason")[0] == 404
    assert get(server.base_url + "/ds/0/rejected?offset=abc")[0] == 400


@pytest.mark.parametrize(
    "path",
    [
        "/ds/1/",
        "/ds/0/shard/99",
        "/ds/0/shard/0/pack/999",
        "/ds/0/shard/0/pack/0/image/999",
        "/ds/0/shard/-1",
        "/ds/0/shard/abc",
        "/nothing",
    ],
)
def test_unknown_things_are_404(server, path):
    status, headers, body = get(server.base_url + path)
    assert status == 404, (path, body[:200])
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../secret.txt",
        "/static/..%2f..%2f..%2fsecret.txt",
        "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/static/..%5c..%5c..%5csecret.txt",
        "/ds/0/shard/..%2f..%2fsecret.txt",
        "/ds/0/..%2f..%2fsecret.txt",
        "/ds/0/shard/0/pack/0/image/..%2f..%2f..%2f..%2fsecret.txt",
        "/static/../web.py",
        "/static/%2e%2e/web.py",
        "/ds/0/index.json",
    ],
)
def test_no_path_reaches_a_file_the_index_does_not_list(server, path):
    status, _, body = get(server.base_url + path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET.encode() not in body and b"BackgroundServer" not in body


def test_a_corrupt_shard_answers_500_with_the_reason(dataset, tmp_path):
    copy = tmp_path / "packed"
    shutil.copytree(dataset, copy)
    shard = PackedDataset(str(copy)).shards[0]["path"]
    (copy / shard).write_bytes(b"not parquet at all")
    with BackgroundServer(str(copy)) as s:
        status, headers, body = get(s.base_url + "/ds/0/shard/0/pack/0")
        assert status == 500
        assert b"reading the data for /ds/0/shard/0/pack/0 failed" in body
        assert b"neo shards verify" in body and b"Traceback" not in body
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert get(s.base_url + "/ds/0/shards")[0] == 200  # the rest still works


def test_pack_page_without_the_datasets_tokenizer(dataset, tmp_path):
    """A tokenizer that exists only where the data was packed: the page still shows the pack."""
    copy = tmp_path / "packed"
    shutil.copytree(dataset, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    index["tokenizer"]["spec"] = str(tmp_path / "tokenizer-elsewhere")
    (tmp_path / "tokenizer-elsewhere").mkdir()
    (copy / INDEX_NAME).write_text(json.dumps(index))
    pack = PackedDataset(str(copy)).read_pack(0, 0)
    with BackgroundServer(str(copy)) as s:
        page = html(s, "/ds/0/shard/0/pack/0")
    assert "tokenizer-elsewhere) is not available here" in page
    assert page.count('<rect class="tok') == pack["num_tokens"]
    assert len(re.findall(r'<figure id="image-\d+">', page)) == len(pack["images"])


def test_the_browser_is_read_only(server):
    req = urllib.request.Request(server.base_url + "/ds/0/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_refuses_a_foreign_host_header(server):
    """A page elsewhere cannot read the browser through DNS rebinding: Host must be ours."""
    req = urllib.request.Request(server.base_url + "/ds/0/", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 421
    port = server.base_url.rsplit(":", 1)[1]
    req = urllib.request.Request(server.base_url + "/ds/0/", headers={"Host": f"localhost:{port}"})
    assert urllib.request.urlopen(req, timeout=10).status == 200


def test_binds_loopback_by_default(dataset):
    with BackgroundServer(dataset) as s:
        assert s.base_url.startswith("http://127.0.0.1:")
        assert s.sock.getsockname()[0] == "127.0.0.1"


def test_a_prefix_with_several_datasets_lists_them(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "runs" / "a" / "packed")
    shutil.copytree(dataset, tmp_path / "runs" / "b" / "packed")
    with BackgroundServer(str(tmp_path / "runs")) as s:
        page = html(s, "/")
        assert re.findall(r'<a href="/ds/(\d)/">([^<]+)</a>', page) == [
            ("0", "a/packed"),
            ("1", "b/packed"),
        ]
        assert "demo" in html(s, "/ds/1/")


def test_serves_a_dataset_on_s3(dataset, s3_bucket):
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    url = f"{s3_bucket}/team/packed"
    fs.put(dataset, url.removeprefix("s3://"), recursive=True)
    local = PackedDataset(dataset)
    with BackgroundServer(s3_bucket) as s:
        assert get(s.base_url + "/")[1]["Location"] == "/ds/0/"
        overview = html(s, "/ds/0/")
        assert f"{local.index['totals']['tokens']:,}" in overview and "tricky" in overview
        pack_page = html(s, "/ds/0/shard/0/pack/0")
        assert pack_page.count('<rect class="tok') == local.read_pack(0, 0)["num_tokens"]
        status, _, body = get(s.base_url + "/ds/0/shard/0/pack/0/image/0")
        assert status == 200 and body == local.read_pack(0, 0)["images"][0]
        assert "image_decode_error" in html(s, "/ds/0/rejected")
