"""The adversarial part of the crawl server (:mod:`neo_data.synthetic.crawl`): hostile servers
and every image mode and container Pillow reads, with the outcome each must get.

Servers: a status line and headers trickled a byte at a time (only the whole-attempt deadline
ends it), gzip bodies (decoded), corrupt gzip and unsupported encodings, redirects to
``file://``, ``ftp://``, the cloud metadata address, private and other loopback addresses, and a
path with non-ASCII characters and spaces (percent-encoded as a browser does). Images: animated
GIF and WebP, palette with transparency, LA, 1-bit, BMP, TIFF, progressive JPEG, EXIF
orientation 8, AVIF (when this Pillow reads it), a 13000x13000 1-bit PNG of a few KiB, a PNG cut
in half, an SVG. ``HOSTILE_CASES`` hold under ``TEST_FILTERS`` / ``TEST_DOWNLOAD``;
``BLOCKED_CASES`` are the redirects ``block_private_addresses`` must stop.
"""

from __future__ import annotations

import gzip
import time
from functools import lru_cache

from PIL import Image, features

from neo_data.synthetic.crawl import GOOD, Case, encode, images, smooth_image

UNICODE_PATH = "/ünïcode/bild mit leerzeichen.png"


@lru_cache(maxsize=1)
def hostile_images() -> dict[str, tuple[bytes, str]]:
    """File name under ``/h/`` -> (bytes, content type)."""

    def frames(seed: int, mode: str = "RGB") -> list[Image.Image]:
        return [smooth_image(seed + k, 72, 60, mode) for k in range(3)]

    gif = frames(201)
    webp = frames(211)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    palette = smooth_image(221, 64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    out = {
        "anim.gif": (encode(gif[0].convert("P"), "GIF", save_all=True,
                            append_images=[f.convert("P") for f in gif[1:]], duration=80,
                            loop=0), "image/gif"),
        "anim.webp": (encode(webp[0], "WEBP", save_all=True, append_images=webp[1:],
                             duration=80), "image/webp"),
        "palette-trns.png": (encode(palette, "PNG", transparency=0), "image/png"),
        "la.png": (encode(smooth_image(222, 70, 50, "LA"), "PNG"), "image/png"),
        "one-bit.png": (encode(smooth_image(223, 64, 80, "1"), "PNG"), "image/png"),
        "bitmap.bmp": (encode(smooth_image(224, 60, 44), "BMP"), "image/bmp"),
        "scan.tif": (encode(smooth_image(225, 50, 70), "TIFF"), "image/tiff"),
        "progressive.jpg": (encode(smooth_image(226, 96, 72), "JPEG", progressive=True),
                            "image/jpeg"),
        "exif8.jpg": (encode(smooth_image(227, 80, 60), "JPEG", exif=exif), "image/jpeg"),
        "huge-1bit.png": (encode(Image.new("1", (13_000, 13_000)), "PNG"), "image/png"),
        "truncated.png": (encode(smooth_image(228, 120, 90), "PNG")[:700], "image/png"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                        b'<rect width="64" height="64"/></svg>', "image/svg+xml"),
        "gzipped.png": (encode(smooth_image(229, 76, 58), "PNG"), "image/png"),
        "unicode.png": (encode(smooth_image(230, 66, 54), "PNG"), "image/png"),
    }  # fmt: skip
    if features.check("avif"):
        out["photo.avif"] = (encode(smooth_image(231, 64, 48), "AVIF"), "image/avif")
    return out


def _image_case(name: str, caption: str, expect: str = "kept") -> Case:
    return Case(name.replace(".", "_").replace("-", "_"), f"/h/{name}", caption, expect)


HOSTILE_CASES: list[Case] = [
    _image_case("anim.gif", "an animated gif of a bouncing red ball"),
    _image_case("anim.webp", "an animated webp of waves on a beach"),
    _image_case("palette-trns.png", "a palette icon with a transparent corner"),
    _image_case("la.png", "a grey picture with an alpha channel of a vase"),
    _image_case("one-bit.png", "a black and white fax of a letter"),
    _image_case("bitmap.bmp", "an old windows bitmap of a desktop"),
    _image_case("scan.tif", "a tiff scan of an old family photograph"),
    _image_case("progressive.jpg", "a progressive photo of the city skyline at night"),
    _image_case("exif8.jpg", "a phone photo turned the other way round"),
    _image_case("huge-1bit.png", GOOD, "decompression_bomb"),
    _image_case("truncated.png", GOOD, "image_decode_error"),
    _image_case("drawing.svg", GOOD, "image_decode_error"),
    Case("gzip", "/gzip/gzipped.png", "a compressed answer holding a picture of a bridge", "kept"),
    Case("gzip_bad", "/gzip-bad", GOOD, "bad_encoding"),
    Case("brotli", "/br", GOOD, "bad_encoding"),
    Case("trickle", "/trickle", GOOD, "timeout"),
    Case("to_file", "/to/file", GOOD, "bad_redirect"),
    Case("to_ftp", "/to/ftp", GOOD, "bad_redirect"),
    Case("unicode_path", UNICODE_PATH, "a picture behind a path with umlauts and spaces", "kept"),
]
if features.check("avif"):
    HOSTILE_CASES.append(_image_case("photo.avif", "an avif photo of a snowy forest"))

# Redirects that only block_private_addresses stops (unreachable or harmless otherwise).
BLOCKED_CASES: list[Case] = [
    Case("to_metadata", "/to/metadata", GOOD, "blocked_address"),
    Case("to_private", "/to/private", GOOD, "blocked_address"),
    Case("to_other_loopback", "/to/loopback", GOOD, "blocked_address"),
]
REDIRECT_TARGETS = {
    "file": "file:///etc/passwd",
    "ftp": "ftp://127.0.0.1/img/png.png",
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "private": "http://10.11.12.13/img/png.png",
    "loopback": "http://127.0.0.2:{port}/img/png.png",
}


# --- routes (``handler`` is crawl._Handler; ``path`` is unquoted) ------------------------------


def _h(handler, path: str):
    name = path.split("/", 2)[2]
    if name not in hostile_images():
        return handler._send(404, b"not found", "text/plain")
    data, ctype = hostile_images()[name]
    handler._send(200, data, ctype)


def _gzip(handler, path: str):
    data, ctype = hostile_images()[path.split("/", 2)[2]]
    handler._send(200, gzip.compress(data, mtime=0), ctype, {"Content-Encoding": "gzip"})


def _gzip_bad(handler, path: str):
    handler._send(200, b"\x1f\x8b\x08\x00not gzip at all" * 4, "image/png",
                  {"Content-Encoding": "gzip"})  # fmt: skip


def _brotli(handler, path: str):
    handler._send(200, images()["png"], "image/png", {"Content-Encoding": "br"})


def _trickle(handler, path: str):
    """Status line and headers one byte every 50 ms (about 5 s), then a good image: each read
    is quick, the attempt is not."""
    body = images()["jpeg"]
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"x" * 40
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    try:
        for i in range(len(head)):
            if handler.server.stopping.is_set():
                return
            handler.wfile.write(head[i : i + 1])
            handler.wfile.flush()
            time.sleep(0.05)
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    handler.close_connection = True


def _to(handler, path: str):
    target = REDIRECT_TARGETS[path.rsplit("/", 1)[1]].format(port=handler.server.server_address[1])
    handler.send_response(302)
    handler.send_header("Location", target)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _flaky(handler, path: str):
    """``/flaky/<k>/<name>``: 503 for the first ``k`` requests of this exact path, then the
    image (a transient failure that a retry of the unit gets past)."""
    k, name = path.split("/")[2:4]
    if handler.server.hits.get(handler.path, 0) <= int(k):
        return handler._send(503, b"busy", "text/plain")
    data, ctype = hostile_images()[name]
    handler._send(200, data, ctype)


def _unicode(handler, path: str):
    if path != UNICODE_PATH:
        return handler._send(404, b"not found", "text/plain")
    data, ctype = hostile_images()["unicode.png"]
    handler._send(200, data, ctype)


HOSTILE_ROUTES = {
    "h": _h,
    "gzip": _gzip,
    "gzip-bad": _gzip_bad,
    "br": _brotli,
    "trickle": _trickle,
    "to": _to,
    "flaky": _flaky,
    UNICODE_PATH.split("/")[1]: _unicode,
}
