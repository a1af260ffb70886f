"""The fetch (engine ``neo``) against the hostile part of the crawl server
(neo_data/synthetic/hostile.py): trickled headers, compressed bodies, redirects to private
addresses and ``file://``, URLs a browser would fix or refuse, every image mode and container."""

from __future__ import annotations

import time

import httpx
import pytest

from neo_data.curate import netguard
from neo_data.curate.fetch import fetch
from neo_data.curate.filters import Drop, inspect_image
from neo_data.curate.netguard import Failure, normalize_url
from neo_data.manifest.curate import DownloadSpec, FilterSpec
from neo_data.synthetic.crawl import TEST_DOWNLOAD, TEST_FILTERS, CrawlServer
from neo_data.synthetic.hostile import BLOCKED_CASES, HOSTILE_CASES, REDIRECT_TARGETS

SPEC = DownloadSpec(**TEST_DOWNLOAD)
FILTERS = FilterSpec(**TEST_FILTERS)


@pytest.fixture(scope="module")
def server():
    with CrawlServer(stall_s=2.0) as s:
        yield s


def outcome(url: str, spec: DownloadSpec = SPEC) -> tuple[str, object]:
    got = fetch(url, spec)
    if got.reason is not None:
        return got.reason, got
    info = inspect_image(got.data, FILTERS)
    return (info.reason if isinstance(info, Drop) else "kept"), got


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=lambda c: c.name)
def test_each_hostile_answer_gets_its_reason(server, case):
    t0 = time.perf_counter()
    reason, got = outcome(server.url(case.path))
    assert reason == case.expect, got.detail
    assert time.perf_counter() - t0 < (SPEC.retries + 1) * (SPEC.deadline_s + 0.3) + 0.5


def test_trickled_headers_end_at_the_deadline(server):
    """The server sends its status line and headers a byte every 50 ms (5 s in all): every
    socket read is quick, so only a deadline over the whole attempt ends it."""
    spec = DownloadSpec(**{**TEST_DOWNLOAD, "retries": 0, "deadline_s": 0.8})
    t0 = time.perf_counter()
    got = fetch(server.url("/trickle"), spec)
    took = time.perf_counter() - t0
    assert got.reason == "timeout" and "deadline" in got.detail
    assert took < 1.3, took


def test_gzip_bodies_are_decoded_to_the_original_bytes(server):
    from neo_data.synthetic.hostile import hostile_images

    got = fetch(server.url("/gzip/gzipped.png"), SPEC)
    assert got.reason is None and got.data == hostile_images()["gzipped.png"][0]


def test_private_addresses_are_blocked_by_default(server):
    """The default refuses the loopback server itself, before any byte is sent to it."""
    before = server.hits.get("/img/png.png?blocked", 0)
    got = fetch(server.url("/img/png.png?blocked"), DownloadSpec())
    assert got.reason == "blocked_address" and "127.0.0.1" in got.detail and got.attempts == 1
    assert server.hits.get("/img/png.png?blocked", 0) == before
    for engine in ("neo", "img2dataset"):
        spec = DownloadSpec(**{**TEST_DOWNLOAD, "block_private_addresses": True, "engine": engine})
        assert fetch(server.url("/img/png.png"), spec).reason == "blocked_address"


@pytest.mark.parametrize("case", BLOCKED_CASES, ids=lambda c: c.name)
def test_every_redirect_hop_is_checked(server, case, monkeypatch):
    """Only 127.0.0.1 (the test server) is let through: a redirect from it to the metadata
    address, a private network or another loopback address is refused at that hop."""
    rule = netguard.address_problem
    monkeypatch.setattr(
        netguard, "address_problem", lambda a: None if a == "127.0.0.1" else rule(a)
    )
    spec = DownloadSpec(**{**TEST_DOWNLOAD, "block_private_addresses": True})
    got = fetch(server.url(case.path), spec)
    assert got.reason == case.expect, got.detail
    host = REDIRECT_TARGETS[case.path.rsplit("/", 1)[1]].split("/")[2].split(":")[0]
    assert host in got.detail
    assert fetch(server.url("/img/png.png"), spec).reason is None  # the first hop is allowed


@pytest.mark.parametrize(
    ("address", "problem"),
    [("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
     ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("172.16.5.5", "private"),
     ("fd00::1", "private"), ("::ffff:10.0.0.1", "private"), ("0.0.0.0", "private"),
     ("224.0.0.1", "multicast"), ("100.64.0.1", "not global"), ("8.8.8.8", None),
     ("2606:4700::1111", None)],
)  # fmt: skip
def test_address_rule(address, problem):
    assert netguard.address_problem(address) == problem


BROWSER_FIXES = [
    "http://Example.com/ünïcode/bild mit leerzeichen.png",
    "http://example.com/a b?q=ü x&r=1",
    "http://example.com/%41%zz/ä",
    "HTTP://EXAMPLE.COM:8080/x",
    "http://bücher.example/x.png",
    'http://example.com/a"<>`{}|\\^.png',
    "http://[::1]:8080/x",
    "http://example.com/x#fragment",
    "http://example.com/~user/a;b=c/@x",
]


@pytest.mark.parametrize("url", BROWSER_FIXES)
def test_urls_are_percent_encoded_as_httpx_does(url):
    """The peer: httpx's URL parser (WHATWG percent-encode sets, IDNA hosts)."""
    assert normalize_url(url) == str(httpx.URL(url).copy_with(fragment=None))


def test_where_normalize_url_follows_whatwg_not_httpx():
    assert normalize_url("http://example.com/?q='") == "http://example.com/?q=%27"  # special query
    assert normalize_url("http://example.com") == "http://example.com/"  # the path a request sends
    assert normalize_url("  http://example.com/a\tb\n ") == "http://example.com/ab"


@pytest.mark.parametrize(
    "url",
    ["http://[::1/x.png", "http://exa mple.com/x.png", "http://example.com:99999/x",
     "http:///x.png", "http://user:secret@example.com/x.png", "http://example.com/\ud800.png",
     "http://a<b.com/", "http://example.com:port/x"],
)  # fmt: skip
def test_urls_no_request_can_be_made_of_are_bad_url(url):
    with pytest.raises(Failure) as e:
        normalize_url(url)
    assert e.value.reason == "bad_url"
    got = fetch(url, SPEC)
    assert (got.reason, got.attempts, got.data) == ("bad_url", 0, None)
    assert "secret" not in got.detail


def test_a_non_ascii_path_is_fetched(server):
    from neo_data.synthetic.hostile import UNICODE_PATH, hostile_images

    got = fetch(server.url(UNICODE_PATH), SPEC)
    assert got.reason is None and got.data == hostile_images()["unicode.png"][0]
