"""The shard browser as an aiohttp app: a read-only local web page over packed datasets (local or
``s3://``; served by :mod:`neo_data.browser.server`).

aiohttp serves it: it is already installed with ``ray[default]`` (and s3fs), well kept, and
small; pages are rendered on the server by Jinja2 with autoescaping, with no script and no
external resource (the Content-Security-Policy allows only this origin). Reads go through
fsspec in worker threads, so one slow object-store read does not block other requests.

Every URL names things by their number in what the index lists (dataset ``d`` of the datasets
found, shard ``i`` of ``index.json``, pack ``p`` of that shard, image ``k`` of that pack), so no
request can name a file the index does not know: there is no path to traverse.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from neo_data.browser import layout as thw
from neo_data.browser.views import (
    DatasetEntry,
    SourceCount,
    dataset_row,
    find_datasets,
    image_mime,
    pack_rows,
    read_rejected,
    sample_images,
    sample_turns,
    source_counts,
    token_rows,
)
from neo_data.encoding.tokens import NeoTokenizer, load_tokenizer
from neo_data.format.schema import SchemaMismatch, ShardCorrupt
from neo_data.format.shards import PackedDataset
from neo_data.hostcheck import host_allowed

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
REJECTED_PAGE = 100
SHOW_W, SHOW_H = (
    320,
    200,
)  # px: the largest an image is shown in a pack's image grid  # rows per page of the rejected view
CSP = "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'self'"


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: "" if v is None else f"{v:,}"
    env.filters["pct"] = lambda v: f"{100 * v:.1f}%"
    return env


@dataclass
class _Dataset:
    entry: DatasetEntry
    ds: PackedDataset | None


class Browser:
    """The state behind the pages: the datasets found below ``url`` and small caches.

    Opening happens once; packs and per-dataset summaries are cached (a pack page loads each of
    its images, and every image request would otherwise re-read the pack's row group).
    """

    def __init__(self, url: str, max_depth: int = 3):
        self.url = url
        self.entries = find_datasets(url, max_depth)
        if not self.entries:
            raise FileNotFoundError(
                f"{url}: no packed dataset (index.json) at most {max_depth} levels below"
            )
        self.datasets = [
            _Dataset(e, PackedDataset(e.url) if e.index is not None else None) for e in self.entries
        ]
        self.read_pack = functools.lru_cache(maxsize=8)(self._read_pack)
        self.sources = functools.lru_cache(maxsize=16)(self._sources)
        self.rejected = functools.lru_cache(maxsize=4)(self._rejected)

    def dataset(self, d: int) -> PackedDataset:
        if not 0 <= d < len(self.datasets) or self.datasets[d].ds is None:
            raise web.HTTPNotFound(text=f"no dataset {d}")
        return self.datasets[d].ds

    def shard(self, d: int, i: int) -> tuple[PackedDataset, dict]:
        ds = self.dataset(d)
        if not 0 <= i < len(ds.shards):
            raise web.HTTPNotFound(text=f"dataset {d}: no shard {i} (it has {len(ds.shards)})")
        return ds, ds.shards[i]

    def _read_pack(self, d: int, i: int, p: int) -> dict:
        ds, shard = self.shard(d, i)
        if not 0 <= p < shard["packs"]:
            raise web.HTTPNotFound(text=f"{shard['path']}: no pack {p} (it has {shard['packs']})")
        return ds.read_pack(i, p)

    def _rejected(self, d: int) -> pa.Table:
        return read_rejected(self.dataset(d))

    def _sources(self, d: int) -> dict[str, SourceCount]:
        return source_counts(self.dataset(d), self.rejected(d))

    def tokenizer(self, d: int) -> NeoTokenizer | None:
        """The dataset's tokenizer, or None when it cannot be loaded here (e.g. a tokenizer
        directory that exists only on the cluster that packed the data): the pack page then
        says so instead of showing sample text and token strings; everything else still works."""
        spec = self.dataset(d).index["tokenizer"]["spec"]
        try:
            return load_tokenizer(spec)
        except (OSError, ValueError) as e:
            log.warning("tokenizer %s not available here (%s): no sample text", spec, e)
            return None


BROWSER = web.AppKey("browser", Browser)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", frozenset)

# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def _int(request: web.Request, name: str) -> int:
    return int(request.match_info[name])  # the routes accept digits only


async def _page(request: web.Request, template: str, **context: Any) -> web.Response:
    env: jinja2.Environment = request.app[TEMPLATES]
    browser: Browser = request.app[BROWSER]
    html = env.get_template(template).render(root_url=browser.url, **context)
    response = web.Response(text=html, content_type="text/html")
    response.enable_compression()  # a pack page is ~1 MB of markup, ~10x smaller gzipped
    return response


async def _run(fn: Callable, *args: Any) -> Any:
    """Blocking fsspec/pyarrow work off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def datasets_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    if len(browser.entries) == 1 and browser.entries[0].index is not None:
        raise web.HTTPFound("/ds/0/")
    rows = [dataset_row(e) for e in browser.entries]
    return await _page(request, "datasets.html", rows=rows)


async def overview_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d = _int(request, "d")
    ds = browser.dataset(d)
    sources = await _run(browser.sources, d)
    index = ds.index
    buckets = [
        {**b, "fill": b["tokens"] / (b["packs"] * index["seq_len"]) if b["packs"] else 0.0}
        for b in index["buckets"]
    ]
    t = index["totals"]
    return await _page(
        request,
        "overview.html",
        d=d,
        entry=browser.entries[d],
        index=index,
        totals=t,
        text_ratio=t["text_samples"] / t["samples"] if t["samples"] else 0.0,
        buckets=buckets,
        sources=sources,
        many=len(browser.entries) > 1,
    )


async def shards_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d = _int(request, "d")
    ds = browser.dataset(d)
    return await _page(
        request, "shards.html", d=d, entry=browser.entries[d], index=ds.index, shards=ds.shards
    )


async def shard_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d, i = _int(request, "d"), _int(request, "i")
    ds, shard = browser.shard(d, i)
    packs = await _run(pack_rows, ds, i)
    return await _page(
        request, "shard.html", d=d, entry=browser.entries[d], i=i, shard=shard, packs=packs
    )


async def pack_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d, i, p = _int(request, "d"), _int(request, "i"), _int(request, "p")
    ds, shard = browser.shard(d, i)
    pack = await _run(browser.read_pack, d, i, p)
    tok = await _run(browser.tokenizer, d)
    context = await _run(_pack_context, pack, tok)
    return await _page(
        request,
        "pack.html",
        d=d,
        entry=browser.entries[d],
        i=i,
        p=p,
        shard=shard,
        pack=pack,
        seq_len=ds.index["seq_len"],
        tokenizer_spec=ds.index["tokenizer"]["spec"],
        **context,
    )


def _pack_context(pack: dict, tok: NeoTokenizer | None) -> dict:
    cu = pack["cu_seqlens"]
    samples = []
    for k in range(len(cu) - 1):
        samples.append(
            {
                "k": k,
                "id": pack["sample_ids"][k],
                "source": pack["sample_sources"][k],
                "text_only": pack["sample_text_only"][k],
                "tokens": cu[k + 1] - cu[k],
                "images": sample_images(pack, k),
                "turns": sample_turns(pack, k, tok) if tok else [],
            }
        )
    image_sample = {o: s["k"] for s in samples for o in s["images"]}
    images = [
        {
            "k": o,
            "height": h,
            "width": w,
            "rows": h // 32,
            "cols": w // 32,
            "sample": image_sample.get(o),
            # shown at most SHOW_W x SHOW_H, never enlarged; sizes in the markup keep the grid
            # from reflowing while images load
            "show_w": round(w * min(1.0, SHOW_W / w, SHOW_H / h)),
            "show_h": round(h * min(1.0, SHOW_W / w, SHOW_H / h)),
        }
        for o, (h, w) in enumerate(zip(pack["image_heights"], pack["image_widths"], strict=True))
    ]
    tokens = token_rows(pack, tok) if tok else []
    return {
        "samples": samples,
        "images": images,
        "tokens": tokens,
        "layout": thw.layout(pack),
        "cell": thw.CELL - 1,
    }


async def image(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d, i, p, k = (_int(request, n) for n in ("d", "i", "p", "k"))
    pack = await _run(browser.read_pack, d, i, p)
    if not 0 <= k < len(pack["images"]):
        raise web.HTTPNotFound(text=f"pack {pack['pack_id']}: no image {k}")
    data = pack["images"][k]
    mime, _ = image_mime(data)
    return web.Response(
        body=data, content_type=mime, headers={"Cache-Control": "private, max-age=3600"}
    )


async def rejected_page(request: web.Request) -> web.Response:
    browser: Browser = request.app[BROWSER]
    d = _int(request, "d")
    ds = browser.dataset(d)
    table = await _run(browser.rejected, d)
    reason = request.query.get("reason") or None
    try:
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="offset must be a whole number") from None
    reasons = dict(zip(*_value_counts(table, "reason"), strict=True))
    if reason is not None:
        if reason not in reasons:
            raise web.HTTPNotFound(text=f"no rejected rows with reason {reason!r}")
        table = table.filter(pc.equal(table["reason"], reason))
    rows = table.slice(offset, REJECTED_PAGE).to_pylist()
    return await _page(
        request,
        "rejected.html",
        d=d,
        entry=browser.entries[d],
        dropped=ds.index["totals"]["dropped"],
        reasons=reasons,
        reason=reason,
        rows=rows,
        offset=offset,
        total=table.num_rows,
        page=REJECTED_PAGE,
    )


def _value_counts(table: pa.Table, column: str) -> tuple[list[str], list[int]]:
    vc = pc.value_counts(table[column]).to_pylist()
    vc.sort(key=lambda r: -r["counts"])
    return [r["values"] for r in vc], [r["counts"] for r in vc]


SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def guard(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Security headers on every response, errors included. With ``allowed_hosts`` set (a
    loopback server) other ``Host`` headers are refused, so a web page cannot read this one by
    DNS rebinding. A dataset that cannot be read answers 500 with the reason, not a traceback."""
    allowed = request.app[ALLOWED_HOSTS]
    try:
        if not host_allowed(request.host, allowed):
            raise web.HTTPMisdirectedRequest(text=f"unexpected Host {request.host!r}")
        try:
            response = await handler(request)
        except (OSError, SchemaMismatch, ShardCorrupt, pa.ArrowException) as e:  # unreadable data
            log.warning("%s: %s: %s", request.path, type(e).__name__, e)
            raise web.HTTPInternalServerError(
                text=f"reading the data for {request.path} failed: {type(e).__name__}: {e}\n"
                "(`neo shards verify URL` checks every shard against the index)"
            ) from e
    except web.HTTPException as e:
        e.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def make_app(
    url: str,
    max_depth: int = 3,
    allowed_hosts: frozenset[str] = frozenset(),
    browser: Browser | None = None,
) -> web.Application:
    """The browser's aiohttp application for the datasets at or below ``url``; requests whose
    ``Host`` is not in ``allowed_hosts`` are refused (an empty set allows any)."""
    app = web.Application(middlewares=[guard])
    app[ALLOWED_HOSTS] = allowed_hosts
    app[BROWSER] = browser or Browser(url, max_depth)
    app[TEMPLATES] = _templates()
    ds = "/ds/{d:\\d+}"
    pack = ds + "/shard/{i:\\d+}/pack/{p:\\d+}"
    app.router.add_get("/", datasets_page)
    app.router.add_get(ds + "/", overview_page)
    app.router.add_get(ds + "/shards", shards_page)
    app.router.add_get(ds + "/shard/{i:\\d+}", shard_page)
    app.router.add_get(pack, pack_page)
    app.router.add_get(pack + "/image/{k:\\d+}", image)
    app.router.add_get(ds + "/rejected", rejected_page)
    app.router.add_static("/static", HERE / "static", follow_symlinks=False)
    return app
