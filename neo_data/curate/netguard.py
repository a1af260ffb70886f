"""The network rules of one download attempt (engine ``neo``): the URL as a browser sends it,
the addresses a crawler may connect to, the redirects it follows, and a deadline that holds for
the whole attempt.

* :func:`normalize_url` -- what a browser does with a pasted URL (WHATWG URL standard): tabs
  and newlines removed, leading/trailing spaces and controls stripped, a non-ASCII host encoded
  with IDNA, every character outside printable ASCII in the path and query percent-encoded as
  UTF-8 (``%XX`` already there is kept), the fragment dropped (never sent). What cannot be made
  into a request -- a malformed host or port, a lone surrogate, credentials -- raises
  :class:`Failure` ``bad_url``.
* ``download.block_private_addresses`` (default on): every hop's host is resolved and each of
  its addresses checked before the connection is made, to that checked address (no second
  lookup a DNS rebinding could answer differently); loopback, link-local (cloud metadata at
  169.254.169.254), private, shared, multicast, reserved and unspecified addresses end the
  download as ``blocked_address``. Redirects go to ``http``/``https`` only (``file://``,
  ``ftp://``, ... are ``bad_redirect``, whatever the setting).
* The deadline: a watchdog thread (one per process) shuts down the attempt's sockets when
  ``deadline_s`` has passed, so a server trickling its status line or headers a byte at a time
  is cut at the deadline too, not only a slow body (each socket read is bounded by
  ``timeout_s`` on its own). Name resolution is the one step it cannot cut: that is bounded by
  the system resolver's own timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import ipaddress
import itertools
import re
import socket
import threading
import time
import urllib.request
from urllib.parse import quote, urljoin, urlsplit


class Failure(Exception):
    """An attempt ended with download ``reason`` (stable, see ``fetch.py``)."""

    def __init__(self, reason: str, detail: str, status: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status = reason, detail, status


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------

# WHATWG's path and query percent-encode sets: C0 controls, space, ", #, <, >, `, {, } (path),
# ", #, <, >, ' (query), DEL and everything above ASCII; `quote` keeps what is listed here.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PATH_SAFE = "".join(c for c in _PRINTABLE if c not in '"#<>?`{}')
_QUERY_SAFE = "".join(c for c in _PRINTABLE if c not in "\"#<>'")
_FORBIDDEN_HOST = set(" #%/:<>?@[\\]^|") | {chr(c) for c in range(0x20)} | {"\x7f"}


def normalize_url(url: str) -> str:
    """``url`` as a browser would request it (module docstring); :class:`Failure` ``bad_url``
    when no request can be made of it. Only ``http``/``https`` URLs are passed here."""
    try:
        return _normalize(url)
    except (ValueError, UnicodeError) as e:
        raise Failure("bad_url", f"{_short(url)}: {type(e).__name__}: {e}"[:300]) from None


def _normalize(url: str) -> str:
    url = url.strip("".join(chr(c) for c in range(0x21))).translate({9: None, 10: None, 13: None})
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials (user:password@) in the URL")
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    port = parts.port  # raises ValueError when not a number in 0..65535
    if ":" in host:  # an IPv6 literal (urlsplit checked the brackets)
        netloc = f"[{ipaddress.IPv6Address(host.split('%', 1)[0]).compressed}]"
    else:
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        if _FORBIDDEN_HOST & set(host) or host.strip(".") == "":
            raise ValueError(f"a character a host cannot hold: {host!r}")
        netloc = host
    if port is not None:
        netloc += f":{port}"
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = quote(parts.query, safe=_QUERY_SAFE)
    return f"{parts.scheme.lower()}://{netloc}{path}" + (f"?{query}" if query else "")


def _short(url: str) -> str:
    """The URL for a message: credentials masked, at most 200 characters, ASCII-escaped."""
    return ascii(_CREDENTIALS.sub("//***@", url)[:200])


_CREDENTIALS = re.compile(r"//[^/@?#]*@")


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def address_problem(address: str) -> str | None:
    """Why a crawler must not connect to ``address`` (an IP as getaddrinfo gives it), or None
    for a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return None if ip.is_global else "not global"


# ---------------------------------------------------------------------------------------------
# One attempt: connections, redirects, deadline
# ---------------------------------------------------------------------------------------------


class AttemptGuard:
    """The sockets of one attempt, its deadline and its address rule."""

    def __init__(self, deadline_s: float, block_private_addresses: bool):
        self.deadline = time.monotonic() + deadline_s
        self.deadline_s = deadline_s
        self.block = block_private_addresses
        self.expired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        _WATCHDOG.watch(self)

    def __enter__(self) -> AttemptGuard:
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.done = True
            self._sockets.clear()

    def track(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            late = self.expired
        if late:
            _shutdown(sock)

    def expire(self) -> None:
        """Called by the watchdog at the deadline: every socket of the attempt is shut down
        (a blocked read returns at once; the caller sees ``expired`` and reports a timeout)."""
        with self._lock:
            if self.done:
                return
            self.expired = True
            sockets = list(self._sockets)
        for s in sockets:
            _shutdown(s)

    def create_connection(self, address, timeout=None, source_address=None) -> socket.socket:
        """``socket.create_connection`` with the address rule: resolve once, check every
        address, connect to a checked one."""
        host, port = address
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before connecting")
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if self.block:
            for *_, sockaddr in infos:
                problem = address_problem(sockaddr[0])
                if problem is not None:
                    raise Failure(
                        "blocked_address",
                        f"{host} resolves to {sockaddr[0]} ({problem}); "
                        "download.block_private_addresses is on",
                    )
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            self.track(sock)
            try:
                sock.settimeout(min(timeout or remaining, remaining))
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                sock.settimeout(timeout)
                return sock
            except OSError as e:
                error = e
                sock.close()
        raise error or OSError(f"no address for {host}")

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose connections and redirects follow this attempt's rules."""
        guard = self

        class HTTP(http.client.HTTPConnection):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self._create_connection = guard.create_connection

        class HTTPS(http.client.HTTPSConnection):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self._create_connection = guard.create_connection

            def connect(self):
                super().connect()
                guard.track(self.sock)  # the TLS socket that replaced the plain one

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(HTTP, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(HTTPS, req, context=self._context)

        return urllib.request.build_opener(HTTPHandler, HTTPSHandler, _Redirects)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (at most 10 hops, loops refused), to http(s) URLs only, each target
    normalised like the first URL."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urljoin(req.full_url, location.strip())
            scheme = urlsplit(target).scheme.lower()
            if scheme not in ("http", "https"):
                fp.close()
                raise Failure("bad_redirect", f"HTTP {code} to {_short(target)}", code)
            try:
                normalized = normalize_url(target)
            except Failure as f:
                fp.close()
                raise Failure("bad_redirect", f"HTTP {code} to {f.detail}", code) from None
            del headers["Location"], headers["URI"]
            headers["Location"] = normalized
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        # the base method: on a TLS socket too, without touching its TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread per process that expires attempts at their deadline (a heap of deadlines;
    finished attempts are dropped when their deadline comes)."""

    def __init__(self):
        self._heap: list[tuple[float, int, AttemptGuard]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, guard: AttemptGuard) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="neo-fetch-deadline",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            heapq.heappush(self._heap, (guard.deadline, next(self._order), guard))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
