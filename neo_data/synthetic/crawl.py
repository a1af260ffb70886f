"""A loopback HTTP server with the good images and the bad answers a crawler meets.

Plain stdlib ``ThreadingHTTPServer`` on 127.0.0.1, port 0 (the OS picks); tests start and stop
it. Every image is generated (deterministic, small, each with its own smooth random content so
that no two cases are perceptual duplicates by accident).

``CASES`` lists every route with the outcome the curation job must give it under
``TEST_FILTERS`` / ``TEST_DOWNLOAD`` (``"kept"`` or a drop reason); the tests and the benchmark
use the same server. ``HOSTILE_CASES`` (:mod:`neo_data.synthetic.hostile`) are the adversarial
part: servers that trickle headers, compress, redirect to private addresses or ``file://``,
images of every mode and container Pillow reads, pixel bombs, hostile paths.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
from PIL import Image

# Settings the expectations below assume (short timeouts: the slow cases cost ~1 s each).
TEST_DOWNLOAD = {
    "threads": 16,
    "timeout_s": 0.6,
    "deadline_s": 1.0,
    "retries": 1,
    "max_bytes": 1 << 20,
    "block_private_addresses": False,  # the server is on 127.0.0.1
}
TEST_FILTERS = {"max_decode_pixels": 4_000_000, "min_side": 16, "languages": ["en"]}


def smooth_image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth random picture: low-frequency content a perceptual hash sees clearly."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    img = small.resize((width, height), Image.Resampling.BICUBIC)
    return img if mode == "RGB" else img.convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@lru_cache(maxsize=1)
def images() -> dict[str, bytes]:
    """Name -> encoded bytes of every image the server serves."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    grey16 = np.asarray(smooth_image(7, 72, 56, "L"), dtype=np.uint16) * 257
    near = smooth_image(12, 320, 240)
    return {
        "jpeg": encode(smooth_image(1, 96, 64), "JPEG", quality=90),
        "png": encode(smooth_image(2, 80, 80), "PNG"),
        "webp": encode(smooth_image(3, 90, 60), "WEBP", quality=80),
        "gif": encode(smooth_image(4, 64, 64).convert("P"), "GIF"),
        "cmyk": encode(smooth_image(5, 100, 70).convert("CMYK"), "JPEG"),
        "exif": encode(smooth_image(6, 80, 48), "JPEG", exif=exif),
        "rgba": encode(smooth_image(8, 60, 60, "RGBA"), "PNG"),
        "png16": encode(Image.fromarray(grey16.astype(np.uint16)), "PNG"),
        "tiny": encode(smooth_image(9, 8, 8), "PNG"),
        "large": encode(smooth_image(10, 1600, 1200), "JPEG", quality=85),
        "octet": encode(smooth_image(11, 70, 90), "PNG"),
        "near_orig": encode(near, "JPEG", quality=95),
        "near_copy": encode(near.resize((200, 150), Image.Resampling.LANCZOS), "JPEG", quality=60),
        "dup": encode(smooth_image(13, 88, 66), "JPEG", quality=90),
        "redirected": encode(smooth_image(14, 66, 88), "PNG"),
        "optout": encode(smooth_image(15, 64, 64), "JPEG"),
        "corrupt": encode(smooth_image(16, 120, 90), "JPEG")[:600],  # cut inside the scan
        "bomb": encode(Image.new("1", (5000, 5000)), "PNG"),  # 25 Mpx in a few KiB
        "wide": encode(smooth_image(17, 400, 20), "PNG"),  # aspect ratio 20
    }


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # on the server; "refused" means a port nobody listens on
    caption: str
    expect: str  # "kept" or the drop reason


GOOD = "a photo of a small object on a table"
CASES: list[Case] = [
    Case("jpeg", "/img/jpeg.jpg", "a red jpeg picture of a garden path", "kept"),
    Case("png", "/img/png.png", "a lossless png picture of a blue lake", "kept"),
    Case("webp", "/img/webp.webp", "a webp picture of a mountain at dusk", "kept"),
    Case(
        "gif",
        "/img/gif.gif",
        "a palette gif picture showing a cartoon cat sleeping on the sofa",
        "kept",
    ),
    Case("cmyk", "/img/cmyk.jpg", "a printed magazine page scanned in colour", "kept"),
    Case("exif", "/img/exif.jpg", "a phone photo that must be rotated upright", "kept"),
    Case("rgba", "/img/rgba.png", "a transparent logo over a white background", "kept"),
    Case("png16", "/img/png16.png", "a sixteen bit grey medical scan of a hand", "kept"),
    Case("large", "/img/large.jpg", "a large landscape photo of a wheat field", "kept"),
    Case("octet", "/octet/img.png", "an image served with a generic content type", "kept"),
    Case("redirect", "/redirect/3", "an image reached after three redirects", "kept"),
    Case("near_orig", "/img/near_orig.jpg", "the original of a picture of a harbour", "kept"),
    Case(
        "near_copy",
        "/img/near_copy.jpg",
        "a smaller recompressed copy of the harbour",
        "duplicate_near",
    ),
    Case("dup_a", "/img/dup.jpg", "a picture of a bicycle leaning on a wall", "kept"),
    Case(
        "dup_b", "/alias/dup.jpg", "the same bicycle picture under another url", "duplicate_exact"
    ),
    Case("tiny", "/img/tiny.png", "a tiny icon of a house and a tree", "image_too_small"),
    Case("wide", "/img/wide.png", "a very wide banner strip of a website", "aspect_ratio"),
    Case("http404", "/status/404", GOOD, "http_client_error"),
    Case("http500", "/status/500", GOOD, "http_server_error"),
    Case("refused", "refused", GOOD, "connection_error"),
    Case("slow", "/slow", GOOD, "timeout"),
    Case("drip", "/drip", GOOD, "timeout"),
    Case("truncated", "/truncated", GOOD, "truncated"),
    Case("text", "/text", GOOD, "not_an_image"),
    Case("html", "/page.html", GOOD, "not_an_image"),
    Case("loop", "/loop/a", GOOD, "too_many_redirects"),
    Case("oversize", "/oversize", GOOD, "too_large"),
    Case("oversize_chunked", "/oversize-chunked", GOOD, "too_large"),
    Case("bomb", "/img/bomb.png", GOOD, "decompression_bomb"),
    Case("bomb_header", "/bomb-header.png", GOOD, "decompression_bomb"),
    Case("corrupt", "/img/corrupt.jpg", GOOD, "image_decode_error"),
    Case("garbage", "/garbage.jpg", GOOD, "image_decode_error"),
    Case("optout", "/optout.jpg", GOOD, "opted_out"),
    Case("empty_caption", "/img/png.png", "   ", "caption_empty"),
    Case("junk_url", "/img/png.png", "https://example.com/photos/123.jpg", "caption_junk"),
    Case("junk_file", "/img/png.png", "IMG_20240101_1234.jpg", "caption_junk"),
    Case("boilerplate", "/img/png.png", "Stock photo of a beach, click here", "caption_junk"),
    Case("french", "/img/png.png", "une photo d'un chat noir assis sur la fenêtre", "language"),
]
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}


class _Handler(BaseHTTPRequestHandler):
    server: CrawlServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 -- quiet: tests read their own output
        pass

    def do_GET(self):  # noqa: N802 -- http.server's naming
        self.server.count(self.path, self.headers.get("User-Agent"))
        path = self.path.split("?", 1)[0]
        from neo_data.synthetic.hostile import HOSTILE_ROUTES  # it builds on this module

        if (hostile := HOSTILE_ROUTES.get(unquote(path).split("/")[1])) is not None:
            return hostile(self, unquote(path))
        if path in self.server.files:
            data, ctype = self.server.files[path]
            return self._send(200, data, ctype)
        route = _ROUTES.get(path) or _ROUTES.get("/" + path.split("/")[1] + "/*")
        if route is None:
            return self._send(404, b"not found", "text/plain")
        return route(self, path)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    # --- routes ----------------------------------------------------------------------------
    def img(self, path: str):
        name, ext = path.rsplit("/", 1)[1].rsplit(".", 1)
        self._send(200, images()[name], CONTENT_TYPES[ext])

    def alias(self, path: str):
        self.img(path.replace("/alias/", "/img/"))

    def octet(self, path: str):
        self._send(200, images()["octet"], "application/octet-stream")

    def status(self, path: str):
        code = int(path.rsplit("/", 1)[1])
        self._send(code, b"error page", "text/plain")

    def redirect(self, path: str):
        left = int(path.rsplit("/", 1)[1])
        target = f"/redirect/{left - 1}" if left > 1 else "/img/redirected.png"
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def loop(self, path: str):
        self.send_response(301)
        self.send_header("Location", "/loop/b" if path.endswith("/a") else "/loop/a")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def slow(self, path: str):
        time.sleep(self.server.stall_s)
        self._send(200, images()["jpeg"], "image/jpeg")

    def drip(self, path: str):
        body = images()["png"]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(len(body)):  # one byte every 0.1 s: each read is quick, the whole is not
            if self.server.stopping.is_set():
                return
            try:
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(0.1)

    def truncated(self, path: str):
        body = images()["jpeg"]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 3])
        self.wfile.flush()
        self.close_connection = True

    def text(self, path: str):
        self._send(200, b"this is not an image, just some text", "text/plain")

    def html(self, path: str):
        self._send(200, b"<!doctype html><html><body><img src=x.jpg></body></html>", "text/html")

    def oversize(self, path: str):
        self._send(200, b"\xff" * (2 << 20), "image/jpeg")

    def oversize_chunked(self, path: str):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"\x00" * 65536
        try:
            for _ in range(40):  # 2.5 MiB, above the 1 MiB cap
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def bomb_header(self, path: str):
        self._send(200, png_header_only(60_000, 60_000), "image/png")

    def garbage(self, path: str):
        self._send(200, b"GIF89a but not really" * 20, "image/jpeg")

    def optout(self, path: str):
        self._send(200, images()["optout"], "image/jpeg", {"X-Robots-Tag": "noai, noimageai"})


_ROUTES = {
    "/img/*": _Handler.img,
    "/alias/*": _Handler.alias,
    "/octet/*": _Handler.octet,
    "/status/*": _Handler.status,
    "/redirect/*": _Handler.redirect,
    "/loop/*": _Handler.loop,
    "/slow": _Handler.slow,
    "/drip": _Handler.drip,
    "/truncated": _Handler.truncated,
    "/text": _Handler.text,
    "/page.html": _Handler.html,
    "/oversize": _Handler.oversize,
    "/oversize-chunked": _Handler.oversize_chunked,
    "/bomb-header.png": _Handler.bomb_header,
    "/garbage.jpg": _Handler.garbage,
    "/optout.jpg": _Handler.optout,
}


class CrawlServer(ThreadingHTTPServer):
    """``with CrawlServer() as s: s.url("/img/png.png")``; ``s.hits[path]`` counts requests.
    ``files`` maps extra paths to ``(bytes, content type)`` (the benchmark serves many)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many crawler threads connect at once

    def __init__(self, files: dict[str, tuple[bytes, str]] | None = None, stall_s: float = 3.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files or {}
        self.stall_s = stall_s
        self.hits: dict[str, int] = {}
        self.user_agents: dict[str, str | None] = {}  # path -> User-Agent of the last request
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        images()  # built before the first request (the slow cases' timeouts are short)
        from neo_data.synthetic.hostile import hostile_images

        hostile_images()

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (timeouts, byte caps) is expected here, not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def count(self, path: str, user_agent: str | None) -> None:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            self.user_agents[path] = user_agent

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> CrawlServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def case_url(server: CrawlServer, case: Case, refused_port: int) -> str:
    if case.path == "refused":
        return f"http://127.0.0.1:{refused_port}/img/png.png"
    return server.url(case.path)
