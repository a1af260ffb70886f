"""The image fetch against img2dataset (its opt-out rule and user agent) and the loopback
crawl server (limits img2dataset lacks: byte cap, per-attempt deadline), with both engines:
``neo`` (our urllib fetch) and ``img2dataset`` (its ``download_image`` behind every attempt)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from email.message import Message

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from neo_data.curate.fetch import TRANSIENT, fetch, img2dataset_reason, is_disallowed  # noqa: E402
from neo_data.manifest.curate import DownloadSpec  # noqa: E402
from neo_data.synthetic.crawl import CASES, TEST_DOWNLOAD, CrawlServer, case_url  # noqa: E402
from tests.helpers import (
    REPO,
    free_port,  # noqa: E402
)

SPEC = DownloadSpec(**TEST_DOWNLOAD)
SPECS = {e: DownloadSpec(**TEST_DOWNLOAD, engine=e) for e in ("neo", "img2dataset")}
# With img2dataset's download_image no Content-Type comes back: a text or HTML answer is
# downloaded (and fails later, at decode). The drip case has no deadline there (see below).
I2D_DOWNLOADS = {"text", "html"}
NO_DEADLINE = "img2dataset's download_image has no deadline: a dripping server holds it for minutes"
DOWNLOAD_REASONS = {
    "http_client_error", "http_server_error", "connection_error", "timeout", "truncated",
    "not_an_image", "too_many_redirects", "too_large", "opted_out",
}  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with CrawlServer(stall_s=2.0) as s:
        yield s


def headers(*values: str) -> Message:
    m = Message()
    for v in values:
        m["X-Robots-Tag"] = v
    return m


HEADER_CASES = [
    (),
    ("noai",),
    ("noimageai, nofollow",),
    ("NoIndex",),
    ("nofollow",),
    ("otherbot: noai",),
    ("neo-curate: noai",),
    ("neo-curate: nofollow", "noimageindex"),
    ("googlebot: noindex", "otherbot: noai"),
    ("unavailable_after: 25 Jun 2010 15:00:00 PST",),
]


@pytest.mark.parametrize("values", HEADER_CASES)
@pytest.mark.parametrize("token", [None, "neo-curate"])
def test_opt_out_rule_equals_img2dataset(values, token):
    from img2dataset.downloader import is_disallowed as peer

    directives = {d.lower() for d in SPEC.disallowed_header_directives}
    assert is_disallowed(headers(*values), token, directives) == peer(
        headers(*values), token, directives
    )


def test_user_agent_is_img2datasets(server):
    from img2dataset.downloader import download_image

    key, stream, err = download_image((0, server.url("/img/png.png?peer")), 2, "neo-curate", None)
    assert err is None and stream is not None
    got = fetch(server.url("/img/png.png?ours"), SPEC)
    assert got.reason is None
    assert server.user_agents["/img/png.png?ours"] == server.user_agents["/img/png.png?peer"]
    assert got.data == stream.getvalue()  # the same bytes as img2dataset downloads


@pytest.mark.parametrize("engine", list(SPECS))
@pytest.mark.parametrize("case", [c for c in CASES if c.expect in DOWNLOAD_REASONS], ids=str)
def test_each_bad_answer_gets_its_reason(server, case, engine):
    spec = SPECS[engine]
    if engine == "img2dataset" and case.name == "drip":
        pytest.skip(NO_DEADLINE)
    t0 = time.perf_counter()
    got = fetch(case_url(server, case, free_port()), spec)
    took = time.perf_counter() - t0
    if engine == "img2dataset" and case.name in I2D_DOWNLOADS:
        assert got.reason is None and got.data, got.detail  # cannot tell: decode rejects it
        return
    assert (got.reason, got.data) == (case.expect, None), got.detail
    assert got.attempts == (spec.retries + 1 if case.expect in TRANSIENT else 1)
    # bounded by the per-attempt deadline (neo) or the socket timeout (these cases), whatever
    # the server does
    assert took < got.attempts * (spec.deadline_s + spec.timeout_s) + 1.0
    assert got.lineage()["status"] == case.expect
    assert got.lineage()["engine"] == engine
    if case.name.startswith("http"):
        assert got.http_status == int(case.path.rsplit("/", 1)[1])


def test_only_the_neo_engine_has_a_deadline(server):
    """The drip server sends one byte every 0.1 s: each read is quick, the body takes minutes.
    neo gives up at ``deadline_s``; img2dataset's ``download_image`` is still reading well after
    (its thread ends when the server stops, at the end of this module)."""
    i2d = threading.Thread(target=fetch, args=(server.url("/drip"), SPECS["img2dataset"]),
                           daemon=True)  # fmt: skip
    i2d.start()
    t0 = time.perf_counter()
    got = fetch(server.url("/drip"), SPECS["neo"])
    took = time.perf_counter() - t0
    assert got.reason == "timeout" and "deadline" in got.detail
    assert took < got.attempts * (SPEC.deadline_s + SPEC.timeout_s) + 0.5
    i2d.join(timeout=1.0)
    assert i2d.is_alive()  # past neo's attempts plus a second, img2dataset is still reading


@pytest.mark.parametrize("engine", list(SPECS))
def test_redirects_are_followed_and_recorded(server, engine):
    got = fetch(server.url("/redirect/3"), SPECS[engine])
    assert got.reason is None and got.data == fetch(server.url("/img/redirected.png"), SPEC).data
    if engine == "neo":
        assert got.final_url.endswith("/img/redirected.png")
        assert got.lineage()["final_url"] == got.final_url
    else:  # img2dataset's download_image returns the bytes only
        assert got.final_url is None and got.lineage()["http_status"] is None


@pytest.mark.parametrize("engine", list(SPECS))
def test_not_a_url(server, engine):
    for url in ("", "ftp://example.com/a.jpg", "not a url", "file:///etc/passwd"):
        got = fetch(url, SPECS[engine])
        assert got.reason == "invalid_url" and got.attempts == 0 and got.data is None


def test_img2dataset_is_imported_only_for_its_engine(server):
    """A worker on engine neo never pays img2dataset's import (OpenCV, albumentations)."""
    code = (
        "import sys; import neo_data.curate.job; from neo_data.curate.fetch import fetch; "
        "from neo_data.manifest.curate import DownloadSpec; "
        "got = fetch(sys.argv[1], DownloadSpec(engine='neo', block_private_addresses=False)); "
        "assert got.data, got.detail; "
        "heavy = {m.split('.')[0] for m in sys.modules} & {'img2dataset', 'albumentations', 'cv2'}; "
        "assert not heavy, heavy"
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code, server.url("/img/png.png")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("HTTP Error 404: Not Found", ("http_client_error", 404)),
        ("HTTP Error 503: Service Unavailable", ("http_server_error", 503)),
        ("HTTP Error 301: The HTTP server returned a redirect error that would lead to an "
         "infinite loop.", ("too_many_redirects", 301)),
        ("timed out", ("timeout", None)),
        ("<urlopen error timed out>", ("timeout", None)),
        ("The read operation timed out", ("timeout", None)),
        ("IncompleteRead(4 bytes read, 10 more expected)", ("truncated", None)),
        ("<urlopen error [Errno 111] Connection refused>", ("connection_error", None)),
        ("<urlopen error [Errno -2] Name or service not known>", ("connection_error", None)),
        ("[Errno 104] Connection reset by peer", ("connection_error", None)),
        ("Remote end closed connection without response", ("connection_error", None)),
        ("Use of image disallowed by X-Robots-Tag directive", ("opted_out", None)),
        ("got more than 100 headers", ("download_error", None)),
    ],
)  # fmt: skip
def test_img2dataset_messages_map_to_reasons(message, expected):
    assert img2dataset_reason(message) == expected


# Where our fetch deliberately differs from img2dataset's download_image: it reads any body
# (text/html pages fail later, at decode) and has no byte cap. The drip case is left out: with
# no deadline img2dataset would read it for minutes.
STRICTER = {"not_an_image", "too_large"}


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "drip"], ids=str)
def test_outcomes_agree_with_img2dataset(server, case):
    from img2dataset.downloader import download_image_with_retry

    url = case_url(server, case, free_port())
    ours = fetch(url, SPEC)
    _, stream, err = download_image_with_retry(
        (0, url), SPEC.timeout_s, SPEC.retries, SPEC.user_agent_token,
        {d.lower() for d in SPEC.disallowed_header_directives},
    )  # fmt: skip
    if ours.reason in STRICTER:
        assert err is None  # img2dataset downloads what we refuse
    elif ours.reason is None:
        assert err is None and stream.getvalue() == ours.data
    else:
        assert stream is None and err, (ours.reason, err)
