"""Hostile source files and hostile text, for every source kind and format: each row ends as a
candidate or a rejected row with a stable reason (rows in = samples + rejected), and no row stops
the unit. The units run in this process (``curate_unit``, what each Ray task runs) against the
loopback crawl server."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neo_data.curate.job import curate_unit
from neo_data.curate.plan import plan_units
from neo_data.curate.sources import read_rows
from neo_data.manifest.curate import CurateSpec
from neo_data.synthetic.crawl import TEST_DOWNLOAD, CrawlServer, encode, smooth_image
from neo_data.synthetic.hostile import UNICODE_PATH

ARABIC = "قطة سوداء تجلس على حافة النافذة وتنظر إلى المطر"
LONG = "a very long caption " * 300  # 6000 characters


@pytest.fixture(scope="module")
def server():
    files = {f"/src/{k}.png": (encode(smooth_image(300 + k, 64 + k, 48 + k), "PNG"), "image/png")
             for k in range(40)}  # fmt: skip
    with CrawlServer(files=files, stall_s=1.0) as s:
        yield s


def conversation(url_count: int, text: str = "what is in the picture?") -> str:
    return json.dumps([{"role": "user", "content": "<image> " * url_count + text},
                       {"role": "assistant", "content": "a small object"}])  # fmt: skip


def write_sources(server: CrawlServer, root: Path) -> tuple[list[dict], dict[str, dict[int, str]]]:
    """Nine sources (caption, conversation, text x csv, jsonl, parquet) plus empty files;
    returns the source specs and, per source, the expected reason of some rows (by row)."""
    img = iter(server.url(f"/src/{k}.png") for k in range(40))
    expect: dict[str, dict[int, str]] = {}

    # --- caption / csv: BOM, CRLF, a malformed record, Latin-1, NUL, controls, RTL, long, URLs
    u = [next(img) for _ in range(6)]
    lines = [
        b"\xef\xbb\xbfurl,caption,note",
        f"{u[0]},a small red boat on a lake,ok".encode(),
        f"{u[1]},too,many,fields,here".encode(),  # 5 fields, the header has 3
        f"{u[2]},".encode() + "caf\u00e9 au lait in a cup".encode("latin-1") + b",latin1",
        f'{u[3]},"a caption with a NUL\x00 inside it",nul'.encode(),
        f"{u[4]},\x07\x1b[31ma caption with terminal escapes,ctl".encode(),
        f'{u[5]},"{ARABIC}",rtl'.encode(),
        b"",  # a blank line: not a row
        f'{server.url("/img/png.png")},"{LONG}",long'.encode(),
        f"{server.url(UNICODE_PATH)},a picture behind a path with umlauts,unicode".encode(),
        b"http://exa mple.com/x.png,a picture on a host with a space,badhost",
        b'http://[::1/x.png,"a picture on a broken IPv6 host",badv6',
    ]
    (root / "cap.csv").write_bytes(b"\r\n".join(lines) + b"\r\n")
    expect["cap_csv"] = {1: "bad_row", 2: "caption_not_utf8", 6: "caption_too_long",
                         8: "bad_url", 9: "bad_url"}  # fmt: skip
    (root / "empty.csv").write_bytes(b"")
    (root / "header-only.csv").write_bytes(b"url,caption\n")

    # --- caption / jsonl: BOM, CRLF, lone surrogates (caption, URL), nesting, not-UTF-8 lines
    u = [next(img) for _ in range(3)]
    jl = [
        json.dumps({"url": u[0], "caption": "a green tractor in a field"}).encode(),
        b'{"url": "%s", "caption": "a lone surrogate \\ud800 in a caption"}' % u[1].encode(),
        b'{"url": "%s\\udc80", "caption": "a lone surrogate in the url"}' % u[2].encode(),
        b"[" * 100_000,  # deeper than the JSON parser recurses
        b'{"url": "x", "caption": "\xff\xfe not utf-8"}',
        b'["a", "list"]',
        json.dumps(
            {
                "url": server.url(UNICODE_PATH),
                "caption": "\u202eright to left override in a caption",
            }
        ).encode(),  # fmt: skip
    ]
    (root / "cap.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(jl) + b"\r\n")
    expect["cap_jsonl"] = {1: "caption_not_utf8", 2: "bad_url", 3: "bad_row", 4: "bad_row",
                           5: "bad_row"}  # fmt: skip
    (root / "empty.jsonl").write_bytes(b"")

    # --- caption / parquet: nulls, long, controls, RTL
    u = [next(img) for _ in range(3)]
    pq.write_table(pa.Table.from_pylist([
        {"url": u[0], "caption": "a lighthouse on a rocky coast"},
        {"url": None, "caption": "a caption without a url"},
        {"url": u[1], "caption": None},
        {"url": u[2], "caption": ARABIC},
        {"url": next(img), "caption": LONG},
        {"url": next(img), "caption": "tab\tand\u0000nul and\u200bzero width"},
    ]), root / "cap.parquet")  # fmt: skip
    expect["cap_parquet"] = {1: "invalid_url", 2: "caption_empty", 4: "caption_too_long"}

    # --- conversation / csv, jsonl, parquet
    u = [next(img) for _ in range(4)]
    conv_csv = [
        b"images,conversation",
        b'"%s","%s"' % (u[0].encode(), conversation(1).replace('"', '""').encode()),
        b'"%s","not json at all"' % u[1].encode(),
        b'"%s","%s",extra' % (u[2].encode(), conversation(1).replace('"', '""').encode()),
    ]
    (root / "conv.csv").write_bytes(b"\n".join(conv_csv))  # no final newline
    expect["conv_csv"] = {1: "bad_conversation", 2: "bad_row"}
    conv_jl = [
        json.dumps({"images": [u[3]], "conversation": conversation(1)}).encode(),
        b'{"images": [], "conversation": [{"role": "user", "content": "hi \\udfff"},'
        b' {"role": "assistant", "content": "hello"}]}',
        b'{"images": [], "conversation": [{"role": "user", "content": "hi"}',
    ]
    (root / "conv.jsonl").write_bytes(b"\n".join(jl_line for jl_line in conv_jl) + b"\n")
    expect["conv_jsonl"] = {1: "bad_conversation", 2: "bad_row"}
    pq.write_table(pa.Table.from_pylist([
        {"images": json.dumps([next(img)]), "conversation": conversation(1)},
        {"images": json.dumps([next(img)]), "conversation": conversation(2)},
    ]), root / "conv.parquet")  # fmt: skip
    expect["conv_parquet"] = {1: "image_count_mismatch"}

    # --- text / csv, jsonl, parquet
    doc = "The harbour wakes early and the boats leave before dawn to fish. " * 2
    (root / "text.csv").write_bytes(
        b"text\n" + f'"{doc}"\n"{doc}, quoted ""twice"""\nshort\n'.encode()
        + "\u00e9t\u00e9 ".encode("cp1252") * 30 + b"\n"
    )  # fmt: skip
    expect["text_csv"] = {2: "text_too_short", 3: "text_not_utf8"}
    (root / "text.jsonl").write_bytes(
        json.dumps({"text": doc + "!"}).encode() + b"\n"
        + b'{"text": "%s \\ud83d alone"}\n' % doc.encode()
    )  # fmt: skip
    expect["text_jsonl"] = {1: "text_not_utf8"}
    pq.write_table(pa.Table.from_pylist([{"text": doc + "?"}, {"text": ""}]),
                   root / "text.parquet")  # fmt: skip
    expect["text_parquet"] = {1: "text_empty"}

    sources = [
        {"name": "cap_csv", "paths": [str(root / "cap.csv"), str(root / "empty.csv"),
                                      str(root / "header-only.csv")]},
        {"name": "cap_jsonl", "paths": [str(root / "cap.jsonl"), str(root / "empty.jsonl")]},
        {"name": "cap_parquet", "path": str(root / "cap.parquet")},
        {"name": "conv_csv", "path": str(root / "conv.csv"), "kind": "conversation"},
        {"name": "conv_jsonl", "path": str(root / "conv.jsonl"), "kind": "conversation"},
        {"name": "conv_parquet", "path": str(root / "conv.parquet"), "kind": "conversation"},
        {"name": "text_csv", "path": str(root / "text.csv"), "kind": "text"},
        {"name": "text_jsonl", "path": str(root / "text.jsonl"), "kind": "text"},
        {"name": "text_parquet", "path": str(root / "text.parquet"), "kind": "text"},
    ]  # fmt: skip
    return sources, expect


def test_every_row_of_every_kind_and_format_ends_counted(server, tmp_path):
    sources, expect = write_sources(server, tmp_path)
    spec = CurateSpec.model_validate({
        "output": str(tmp_path / "out"),
        "download": {**TEST_DOWNLOAD, "rows_per_task": 4, "threads": 4},
        "filters": {"min_side": 16, "near_dedup": False, "exact_dedup": False},
        "sources": sources,
    })  # fmt: skip
    units = plan_units(spec)
    rows_in = {s["name"]: 0 for s in sources}
    for unit in units:
        marker = curate_unit(spec.model_dump_json(), unit, spec.output)
        rows_in[spec.sources[unit.source].name] += marker["rows_in"]
    out = tmp_path / "out"
    ends: dict[str, str] = {}
    for f in sorted((out / "_work" / "units").glob("*.parquet")):
        for sid in pq.read_table(f, columns=["sample_id"]).column("sample_id").to_pylist():
            assert sid not in ends
            ends[sid] = "kept"
    rejected = {}
    for f in sorted((out / "rejected").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            assert r["sample_id"] not in ends
            ends[r["sample_id"]] = r["reason"]
            rejected[r["sample_id"]] = r
    for name, n in rows_in.items():
        mine = {k: v for k, v in ends.items() if k.rsplit("-", 1)[0] == name}
        assert len(mine) == n, (name, n, mine)  # rows in = samples + rejected
        for row, reason in expect[name].items():
            assert mine[f"{name}-{row:09d}"] == reason, (name, row, mine)
    assert rows_in["cap_csv"] == 10 and rows_in["cap_jsonl"] == 7 and rows_in["text_csv"] == 4
    bad = rejected["cap_csv-000000001"]
    assert bad["detail"].endswith("cap.csv:3: 5 fields, the header has 3")  # BOM'd header: line 1
    assert rejected["conv_csv-000000002"]["detail"].endswith(
        "conv.csv:4: 3 fields, the header has 2"
    )
    assert "\\udc80" in rejected["cap_jsonl-000000002"]["url"]  # stored, escaped
    kept = {k for k, v in ends.items() if v == "kept"}
    assert {"cap_csv-000000000", "cap_csv-000000003", "cap_csv-000000004", "cap_csv-000000005",
            "cap_csv-000000007", "cap_jsonl-000000000", "cap_jsonl-000000006",
            "cap_parquet-000000003", "cap_parquet-000000005", "conv_csv-000000000",
            "conv_jsonl-000000000", "text_csv-000000001"} <= kept  # fmt: skip


def test_csv_cells_keep_their_bytes_and_lines_their_numbers(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'\xef\xbb\xbfa,b\r\n"multi\r\nline",\xe9\r\n\r\n1,2,3\r\n"x",""\r\n')
    rows = read_rows(str(path), "csv")
    assert rows[0] == {"a": b"multi\r\nline", "b": b"\xe9"}
    assert rows[1]["_error"].endswith("x.csv:5: 3 fields, the header has 2")
    assert rows[2] == {"a": b"x", "b": b""}
    assert read_rows(str(path), "csv", 1, 3)[1] == rows[2]


def test_the_hostile_crawl_cases_end_with_their_reasons_in_a_unit(server, tmp_path):
    """Every hostile server and image of the crawl server through curate_unit (download,
    decode, filters, the candidate and rejected files written)."""
    from neo_data.synthetic.crawl import TEST_FILTERS
    from neo_data.synthetic.hostile import HOSTILE_CASES

    rows = [{"url": server.url(c.path), "caption": c.caption} for c in HOSTILE_CASES]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "web.parquet")
    spec = CurateSpec.model_validate({
        "output": str(tmp_path / "out"), "download": {**TEST_DOWNLOAD, "rows_per_task": 100},
        "filters": TEST_FILTERS, "sources": [{"name": "web", "path": str(tmp_path / "web.parquet")}],
    })  # fmt: skip
    (unit,) = plan_units(spec)
    marker = curate_unit(spec.model_dump_json(), unit, spec.output)
    out = tmp_path / "out"
    got = {r: "kept" for r in pq.read_table(out / "_work" / "units" / f"{unit.unit_id}.parquet")
           .column("row").to_pylist()}  # fmt: skip
    rejected = out / "rejected" / f"{unit.unit_id}.parquet"
    got |= {r["row"]: r["reason"] for r in pq.read_table(rejected).to_pylist()}
    assert marker["rows_in"] == len(got) == len(HOSTILE_CASES)
    wrong = {c.name: (c.expect, got[i]) for i, c in enumerate(HOSTILE_CASES) if got[i] != c.expect}
    assert not wrong, wrong
