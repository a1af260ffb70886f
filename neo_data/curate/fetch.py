"""Downloading one image the way img2dataset does, plus the two limits it lacks (engine
``neo``, the default), or with img2dataset's own downloader (engine ``img2dataset``).

img2dataset 1.47's ``download_image`` is ``urllib.request.urlopen(...).read()``: the timeout
bounds each socket operation only (a server dripping one byte a second never times out) and the
body is read whole whatever its size. This fetch keeps img2dataset's behaviour -- urllib, its
user-agent string ``... (compatible; <token>; +https://github.com/rom1504/img2dataset)``, its
X-Robots-Tag opt-out rule, retries -- and adds a byte cap (``Content-Length`` checked before
reading, the stream cut past ``max_bytes``) and a deadline per attempt. Only transient failures
are retried (timeouts, connection errors, 5xx, truncated bodies); a 404 or an opt-out is final.

Why engine ``neo`` does not import img2dataset's functions: ``import img2dataset`` pulls in
albumentations and OpenCV (measured: 8.8 s and +310 MiB RSS per process, and a PyPI update
check), for two small functions. :func:`is_disallowed` reproduces its opt-out rule and
``tests/neo_data/curate/test_fetch.py`` checks it against img2dataset's own on every case.

Download reasons (stable): ``invalid_url`` (not http(s)), ``bad_url`` (no request can be made
of it: a malformed host or port, a lone surrogate; ``neo_data/curate/netguard.py`` percent-encodes
what a browser would), ``blocked_address`` (``download.block_private_addresses``),
``bad_redirect`` (a redirect to ``file://`` or another non-http(s) URL), ``http_client_error``
(4xx), ``http_server_error`` (5xx), ``too_many_redirects``, ``connection_error``, ``timeout``
(``timeout_s`` for one socket operation, ``deadline_s`` for the whole attempt: connect, status
line, headers and body), ``truncated``, ``too_large``, ``bad_encoding`` (a ``Content-Encoding``
other than gzip/deflate, or a corrupt one; gzip and deflate bodies are decoded),
``not_an_image`` (a ``text/*`` body such as an HTML page), ``opted_out``, ``download_error``
(engine img2dataset only: a message none of the rules below recognises).

Engine ``img2dataset`` (``download.engine``): each attempt is img2dataset's own
``downloader.download_image`` (imported lazily, in the worker, only for this engine); the URL
check before it, the retry policy (transient failures only: img2dataset's
``download_image_with_retry`` would also re-request a 404 or an opted-out image) and everything
after it are the same as for ``neo``. It returns ``(key, stream, error message)``, so its
failures are mapped from the message (:func:`img2dataset_reason`):

* ``HTTP Error <code>: ...`` -> ``http_client_error`` / ``http_server_error`` (the code is
  kept as ``http_status``), a 30x -> ``too_many_redirects``;
* ``timed out`` (connect or any read) -> ``timeout``; ``IncompleteRead(...)`` -> ``truncated``;
* ``<urlopen error ...>``, refused/reset/closed connections -> ``connection_error``;
* its X-Robots-Tag message -> ``opted_out``; any other message -> ``download_error``.

What cannot be distinguished with it: ``not_an_image`` (no Content-Type is returned: a text or
HTML page is downloaded and fails later as the filter's ``image_decode_error``); a slow body
(no deadline: a drip-fed body, or headers trickled a byte at a time, are read until the server
stops); a gzip body is not decoded (``image_decode_error``); redirects to private addresses are
not seen (``block_private_addresses`` checks the first hop only); ``too_large`` is decided after
the whole body is in memory; ``http_status``, ``content_type`` and ``final_url`` of successful
downloads are not recorded (``None`` in the lineage).
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from email.message import Message
from types import ModuleType
from urllib.parse import urlsplit

from neo_data.curate.netguard import AttemptGuard, address_problem, normalize_url
from neo_data.curate.netguard import Failure as _Failure
from neo_data.manifest.curate import DownloadEngine, DownloadSpec

TRANSIENT = frozenset({"timeout", "connection_error", "http_server_error", "truncated"})
CHUNK = 1 << 16
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"^[\x00-\x20]*([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass
class Fetched:
    url: str
    engine: DownloadEngine = "neo"
    data: bytes | None = None  # None when the download failed
    reason: str | None = None  # a download reason above; None on success
    detail: str = ""
    http_status: int | None = None
    content_type: str | None = None
    final_url: str | None = None  # after redirects
    attempts: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # one line per failed attempt

    def lineage(self) -> dict:
        """What the sample's ``meta.download`` records."""
        return {
            "status": "ok" if self.reason is None else self.reason,
            "engine": self.engine,
            "http_status": self.http_status,
            "content_type": self.content_type,
            "final_url": self.final_url if self.final_url != self.url else None,
            "attempts": self.attempts,
            "bytes": len(self.data) if self.data is not None else None,
            "error": self.detail or None,
        }


def is_disallowed(headers: Message, token: str | None, directives: Collection[str]) -> bool:
    """img2dataset's opt-out rule: an ``X-Robots-Tag`` value ``[<ua token>:] d1, d2, ...`` opts
    out when it names no token or our token and lists one of ``directives``."""
    for value in headers.get_all("X-Robots-Tag", []):
        parts = value.split(":", 1)
        named = [d.strip().lower() for d in parts[-1].split(",")]
        ua = parts[0].lower() if len(parts) == 2 else None
        if (ua is None or ua == token) and any(d in directives for d in named):
            return True
    return False


def user_agent(spec: DownloadSpec) -> str:
    ua = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if spec.user_agent_token:
        ua += f" (compatible; {spec.user_agent_token}; +https://github.com/rom1504/img2dataset)"
    return ua


def fetch(url: str, spec: DownloadSpec) -> Fetched:
    """Download ``url`` with retries on transient failures; never raises for network errors."""
    out = Fetched(url, engine=spec.engine)
    t0 = time.perf_counter()
    scheme = m.group(1).lower() if url and (m := _SCHEME.match(url)) else ""
    if scheme not in ("http", "https"):  # also keeps urllib (both engines) off file:// and ftp://
        out.reason, out.detail = "invalid_url", f"not an http(s) URL: {url[:200]!r}"
        return out
    try:
        request_url = normalize_url(url)
    except _Failure as f:
        out.reason, out.detail = f.reason, f.detail
        return out
    attempt_once = _attempt_img2dataset if spec.engine == "img2dataset" else _attempt
    for attempt in range(spec.retries + 1):
        out.attempts = attempt + 1
        try:
            attempt_once(request_url, spec, out)
            out.reason, out.detail = None, ""
            break
        except _Failure as f:
            out.reason, out.detail, out.http_status = (
                f.reason,
                f.detail,
                f.status or out.http_status,
            )
            out.errors.append(f"{f.reason}: {f.detail}")
            if f.reason not in TRANSIENT:
                break
    out.seconds = time.perf_counter() - t0
    return out


def _opt_out_rule(spec: DownloadSpec) -> tuple[str | None, set[str]]:
    """(user agent token, directives), normalised as img2dataset's ``Downloader`` does."""
    token = spec.user_agent_token.strip().lower() if spec.user_agent_token else None
    return token, {d.strip().lower() for d in spec.disallowed_header_directives}


def _attempt(url: str, spec: DownloadSpec, out: Fetched) -> None:
    token, directives = _opt_out_rule(spec)
    request = urllib.request.Request(url, headers={"User-Agent": user_agent(spec)})
    with AttemptGuard(spec.deadline_s, spec.block_private_addresses) as guard:
        try:
            with guard.opener().open(request, timeout=spec.timeout_s) as r:
                out.http_status, out.final_url = r.status, r.geturl()
                out.content_type = r.headers.get("Content-Type")
                if directives and is_disallowed(r.headers, token, directives):
                    raise _Failure(
                        "opted_out",
                        "X-Robots-Tag: " + ", ".join(r.headers.get_all("X-Robots-Tag", [])),
                    )
                if (out.content_type or "").lower().startswith("text/"):
                    raise _Failure("not_an_image", f"Content-Type {out.content_type}")
                length = r.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > spec.max_bytes:
                    raise _Failure(
                        "too_large", f"Content-Length {length} > max_bytes {spec.max_bytes}"
                    )
                body = _read_capped(r, spec.max_bytes, guard)
                out.data = _decoded(body, r.headers.get("Content-Encoding"), spec.max_bytes)
        except _Failure:
            raise
        except Exception as e:
            if guard.expired:  # the watchdog cut the connection: whatever the read saw
                raise _Failure(
                    "timeout", f"attempt not complete by deadline_s {spec.deadline_s}s"
                ) from None
            raise _network_failure(e, spec) from None


def _network_failure(e: Exception, spec: DownloadSpec) -> _Failure:
    """The reason of an exception urllib or http.client raised during an attempt."""
    if isinstance(e, urllib.error.HTTPError):
        return _classify_http(e)
    if isinstance(e, urllib.error.URLError):
        if isinstance(e.reason, TimeoutError):
            return _Failure("timeout", f"no answer within {spec.timeout_s}s")
        return _Failure("connection_error", str(e.reason)[:200])
    if isinstance(e, http.client.IncompleteRead):
        return _Failure("truncated", f"{len(e.partial)} bytes, {e.expected} more expected")
    if isinstance(e, TimeoutError):
        return _Failure("timeout", f"a read took over {spec.timeout_s}s")
    if isinstance(e, http.client.InvalidURL | UnicodeError):  # a redirect's target, say
        return _Failure("bad_url", f"{type(e).__name__}: {e}"[:200])
    if isinstance(e, http.client.HTTPException | OSError):
        return _Failure("connection_error", f"{type(e).__name__}: {e}"[:200])
    raise e  # a programming error


def _decoded(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip, deflate), capped at ``max_bytes``."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):  # applied in order, so undone last first
        if coding == "identity":
            continue
        if coding not in _WBITS:
            raise _Failure("bad_encoding", f"Content-Encoding {coding} is not supported")
        for wbits in _WBITS[coding]:
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(body, max_bytes + 1)
            except zlib.error as e:
                error = e
                continue
            if len(out) > max_bytes:
                raise _Failure("too_large", f"{coding}-decoded body over max_bytes {max_bytes}")
            if not d.eof:
                raise _Failure("truncated", f"{coding} stream ends early ({len(body)} bytes)")
            body = out
            break
        else:
            raise _Failure("bad_encoding", f"Content-Encoding {coding}: {error}"[:200])
    return body


# gzip (and its old name); deflate is zlib-wrapped by the standard, raw by some servers
_WBITS = {"gzip": (31,), "x-gzip": (31,), "deflate": (15, -15)}


def _classify_http(e: urllib.error.HTTPError) -> _Failure:
    if e.code in _REDIRECT_CODES:  # urllib gives up on loops and on more than 10 hops
        return _Failure("too_many_redirects", str(e.reason)[:200], e.code)
    kind = "http_server_error" if e.code >= 500 else "http_client_error"
    return _Failure(kind, f"HTTP {e.code} {e.reason}"[:200], e.code)


def _read_capped(r: http.client.HTTPResponse, max_bytes: int, guard: AttemptGuard) -> bytes:
    """Read the body in chunks; fail past ``max_bytes`` or the attempt's deadline."""
    parts: list[bytes] = []
    total = 0
    while True:
        if guard.expired or time.monotonic() > guard.deadline:
            raise _Failure("timeout", f"body not complete by the deadline ({total} bytes read)")
        chunk = r.read1(CHUNK) if hasattr(r, "read1") else r.read(CHUNK)
        if not chunk:
            if guard.expired:  # the watchdog shut the socket: an end, but not the body's
                raise _Failure("timeout", f"body not complete by the deadline ({total} bytes read)")
            break
        total += len(chunk)
        if total > max_bytes:
            raise _Failure("too_large", f"body over max_bytes {max_bytes}")
        parts.append(chunk)
    data = b"".join(parts)
    length = r.headers.get("Content-Length")
    if length and length.isdigit() and len(data) < int(length):
        raise _Failure("truncated", f"{len(data)} of {length} bytes")
    return data


# ---------------------------------------------------------------------------------------------
# Engine img2dataset
# ---------------------------------------------------------------------------------------------

_I2D_HTTP = re.compile(r"^HTTP Error (\d{3}): ")
_I2D_OPTED_OUT = "Use of image disallowed by X-Robots-Tag directive"
_I2D_CONNECTION = (
    "<urlopen error",
    "Connection refused",
    "Connection reset",
    "Connection aborted",
    "Remote end closed connection",
    "Broken pipe",
)


@functools.cache
def img2dataset_downloader() -> ModuleType:
    """``img2dataset.downloader``, imported once per process and only when the engine is chosen
    (the package import pulls in OpenCV and albumentations: seconds and ~310 MiB)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else a PyPI check at every import
    try:
        import img2dataset.downloader as downloader
    except ImportError as e:
        raise RuntimeError(
            f"curate.download.engine img2dataset needs the img2dataset package ({e}); "
            "install it or use engine: neo"
        ) from e
    return downloader


def img2dataset_reason(message: str) -> tuple[str, int | None]:
    """(download reason, HTTP status or None) for an error message of img2dataset's
    ``download_image`` (``str()`` of the exception it caught, or its opt-out message)."""
    if message == _I2D_OPTED_OUT:
        return "opted_out", None
    if m := _I2D_HTTP.match(message):
        code = int(m.group(1))
        if code in _REDIRECT_CODES:  # urllib's loop / too-many-hops errors keep the 30x code
            return "too_many_redirects", code
        return ("http_server_error" if code >= 500 else "http_client_error"), code
    if "timed out" in message:  # TimeoutError, "<urlopen error timed out>", SSL read timeouts
        return "timeout", None
    if message.startswith("IncompleteRead("):
        return "truncated", None
    if any(s in message for s in _I2D_CONNECTION):
        return "connection_error", None
    return "download_error", None


def _attempt_img2dataset(url: str, spec: DownloadSpec, out: Fetched) -> None:
    """One attempt through img2dataset's ``download_image``; the byte cap after the fact."""
    token, directives = _opt_out_rule(spec)
    if spec.block_private_addresses:
        _check_first_hop(url)
    download_image = img2dataset_downloader().download_image
    _, stream, err = download_image((0, url), spec.timeout_s, token, directives or None)
    if stream is None:
        message = err or "img2dataset returned neither an image nor an error"
        reason, status = img2dataset_reason(message)
        raise _Failure(reason, f"img2dataset: {message}"[:200], status)
    data = stream.getvalue()
    if len(data) > spec.max_bytes:
        raise _Failure(
            "too_large",
            f"body of {len(data)} bytes > max_bytes {spec.max_bytes} (engine img2dataset "
            "reads the whole body before the cap can be checked)",
        )
    out.data, out.http_status = data, None  # a success's status is not reported to us


def _check_first_hop(url: str) -> None:
    """Engine img2dataset: the URL's own host against the address rule (its redirects happen
    inside img2dataset's urllib call, out of our reach)."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except OSError as e:
        raise _Failure("connection_error", f"{parts.hostname}: {e}"[:200]) from None
    for *_, sockaddr in infos:
        if (problem := address_problem(sockaddr[0])) is not None:
            raise _Failure(
                "blocked_address",
                f"{parts.hostname} resolves to {sockaddr[0]} ({problem}); "
                "download.block_private_addresses is on",
            )
