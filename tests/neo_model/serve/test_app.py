"""``neo serve`` as a real HTTP server (a subprocess on 127.0.0.1): answers equal direct
generation, the official ``openai`` client and the ``openai`` recaption backend work against it,
and malformed requests get clear 4xx answers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from neo_data.encoding.tokens import load_tokenizer, user_content
from neo_data.manifest.recaption import GenerationSpec, OpenAISpec
from neo_data.recaption.chat import OpenAICaptioner
from neo_model.config import debug
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.model import NeoChatModel
from neo_model.prompting import build_prompt
from neo_model.weights import save_pretrained
from tests.helpers import REPO, free_port, image_bytes

STEPS = 5
MAX_REQUEST = 60_000  # bytes (--max-request-mb below)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, NeoChatModel]:
    torch.manual_seed(0)
    model = NeoChatModel(debug()).eval()
    path = tmp_path_factory.mktemp("ckpt") / "neo-debug"
    save_pretrained(model, path)
    return path, model


@pytest.fixture(scope="module")
def server(checkpoint):
    """``python -m pipelines.serve`` on a free port; yields its base URL (``.../v1``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.serve", "--checkpoint", str(checkpoint[0]),
           "--port", str(port), "--device", "cpu", "--max-request-mb", str(MAX_REQUEST / 2**20),
           "--max-images", "2", "--max-new-tokens", "16", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"neo serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("neo serve did not come up")
    yield f"{base}/v1"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def picture_png(w: int = 100, h: int = 70) -> bytes:
    img = Image.effect_mandelbrot((w, h), (-2, -1, 1, 1), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def direct_answer(model, tok, question: str, images: list[bytes]) -> str:
    """What ``neo chat`` computes for the same question (the peer of the server's answer)."""
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    turns = [("user", user_content(question, len(decoded)))]
    cfg = model.config
    ids, _, pixels = build_prompt(tok, turns, decoded, cfg.min_pixels, cfg.max_pixels)
    new = generate(model, [Prompt(ids, pixels)], SamplingParams(max_new_tokens=STEPS))[0]
    return tok.decode(new, skip_special_tokens=True)


def post(server: str, body: dict | bytes, **kw) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.post(f"{server}/chat/completions", json=body, timeout=60, **kw)
    return httpx.post(f"{server}/chat/completions", content=body, timeout=60, **kw)


# ---------------------------------------------------------------------------------------------
# Well-formed requests
# ---------------------------------------------------------------------------------------------


def test_text_and_image_answers_equal_direct_generation(server, checkpoint, tok):
    _, model = checkpoint
    png = picture_png()
    content = [
        {"type": "image_url", "image_url": {"url": data_url(png)}},
        {"type": "text", "text": "What is this?"},
    ]
    r = post(server, {"model": "neo-debug", "messages": [{"role": "user", "content": content}],
                      "max_tokens": STEPS})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "neo-debug"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == direct_answer(model, tok, "What is this?", [png])
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= STEPS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # 100x70 at the debug budget is a 2x3 grid: 6 image tokens + <img> + </img> in the prompt
    text_only = post(server, {"messages": [{"role": "user", "content": "What is this?"}],
                              "max_tokens": STEPS}).json()  # fmt: skip
    assert usage["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == 6 + 2 + 1  # + "\n"
    assert text_only["choices"][0]["message"]["content"] == direct_answer(
        model, tok, "What is this?", []
    )


def test_literal_image_tag_in_text_stays_text(server):
    r = post(server, {"messages": [{"role": "user", "content": "what is <image>?"}],
                      "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200, r.text


def test_official_client_plain_and_streaming(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = client.chat.completions.create(model="neo-debug", messages=messages, max_tokens=4)
    stream = client.chat.completions.create(
        model="neo-debug", messages=messages, max_tokens=4, stream=True
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == ["neo-debug"]


def test_concurrent_requests_are_all_answered_alike(server):
    body = {"messages": [{"role": "user", "content": "Count."}], "max_tokens": 3}
    alone = post(server, body).json()["choices"][0]["message"]["content"]
    answers: list[str] = []

    def ask():
        answers.append(post(server, body).json()["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    assert httpx.get(server.removesuffix("/v1") + "/health", timeout=10).status_code == 200
    for t in threads:
        t.join()
    assert answers == [alone] * 3


def test_server_listens_on_loopback_only(server):
    port = int(server.rsplit(":", 1)[1].split("/")[0])
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1, state LISTEN


# ---------------------------------------------------------------------------------------------
# Malformed requests
# ---------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "hello"}


def image_message(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        ({"messages": []}, 400, "messages", "at least 1"),
        ({"model": "neo-debug"}, 400, "messages", "required"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", "user"),
        ({"messages": [USER], "n": 2}, 400, "n", "n = 1"),
        ({"messages": [USER], "top_p": 0.5}, 400, "top_p", "top_k"),
        ({"messages": [USER], "max_tokens": 17}, 400, "max_tokens", "cap of 16"),
        ({"messages": [USER], "temperature": -1}, 400, "temperature", "greater than"),
        ({"messages": [USER], "model": "gpt-4o"}, 404, "model", "not served"),
        ({"messages": [image_message("http://example.com/a.png")]}, 400,
         "messages[0].content[0].image_url", "does not fetch"),
        ({"messages": [image_message("data:image/png;base64,@@@")]}, 400,
         "messages[0].content[0].image_url", "base64"),
        ({"messages": [image_message(data_url(b"\x89PNG broken"))]}, 400,
         "messages[0].content[0].image_url", "image_decode_error"),
        ({"messages": [image_message(data_url(image_bytes(400, 1)))]}, 400,
         "messages[0].content[0].image_url", "aspect_ratio_too_extreme"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "messages[0].content[0]", "image_url"),
        ({"messages": [{"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image_bytes(40, 40))}}]}]},
         400, "messages[0].content[0]", "assistant"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_4xx(server, body, status, param, words):
    r = post(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_too_many_images(server):
    part = {"type": "image_url", "image_url": {"url": data_url(image_bytes(40, 40))}}
    r = post(server, {"messages": [{"role": "user", "content": [part, part, part]}]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[2]"
    assert "more than 2 images" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413_declared_or_chunked(server):
    big = {"messages": [{"role": "user", "content": "x" * MAX_REQUEST}]}
    r = post(server, big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the server counts while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    r = httpx.post(f"{server}/chat/completions", content=chunks(), timeout=30)
    assert r.status_code == 413


def test_unknown_route_and_method(server):
    r = httpx.get(f"{server}/completions", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{server}/chat/completions", timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_server_still_answers_after_bad_requests(server):
    assert post(server, b"{").status_code == 400
    assert post(server, {"messages": [USER], "max_tokens": 2}).status_code == 200


# ---------------------------------------------------------------------------------------------
# The openai recaption backend against this server
# ---------------------------------------------------------------------------------------------


def openai_captioner(endpoint: str, **settings) -> OpenAICaptioner:
    return OpenAICaptioner(
        "neo-debug",
        "Describe the image.",
        GenerationSpec(max_new_tokens=STEPS),
        178_956_970,
        OpenAISpec(endpoint=endpoint, **settings),
    )


def test_openai_backend_captions_like_direct_generation(server, checkpoint, tok):
    _, model = checkpoint
    images = [picture_png(), picture_png(64, 96), b"not an image", image_bytes(48, 40, "JPEG")]
    got = openai_captioner(server, max_concurrency=2).caption([[b] for b in images])
    assert [c.reason for c in got] == [None, None, "image_decode_error", None]
    for c, data in zip(got, images, strict=True):
        if c.text is not None:
            assert c.text == direct_answer(model, tok, "Describe the image.", [data]).strip()


def test_openai_backend_reads_the_key_from_the_named_variable(server, monkeypatch):
    from neo_data.recaption.captioners import CaptionerUnavailable

    monkeypatch.delenv("NEO_TEST_KEY", raising=False)
    with pytest.raises(CaptionerUnavailable, match="NEO_TEST_KEY is not set"):
        openai_captioner(server, api_key_env="NEO_TEST_KEY")
    monkeypatch.setenv("NEO_TEST_KEY", "secret-value")
    assert openai_captioner(server, api_key_env="NEO_TEST_KEY").caption([[picture_png()]])[0].text


class FlakyProxy:
    """Forwards to ``target``, answering the first ``failures`` requests with ``status`` and
    recording the concurrency it sees (a real server standing in for an overloaded one)."""

    def __init__(self, target: str, failures: int, status: int = 503):
        self.target, self.left, self.status = target, failures, status
        self.lock = threading.Lock()
        self.seen = 0
        self.in_flight = self.peak = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.seen += 1
                    fail = proxy.left > 0
                    proxy.left -= fail
                    proxy.in_flight += 1
                    proxy.peak = max(proxy.peak, proxy.in_flight)
                try:
                    if fail:
                        code, data = proxy.status, b'{"error": {"message": "busy"}}'
                    else:
                        r = httpx.post(proxy.target + self.path.removeprefix("/v1"), content=body,
                                       headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
                        code, data = r.status_code, r.content
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if fail:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_openai_backend_retries_overload_and_limits_concurrency(server):
    proxy = FlakyProxy(server, failures=3, status=429)
    try:
        images = [[image_bytes(40 + i, 40, "JPEG")] for i in range(4)]
        got = openai_captioner(proxy.url, max_concurrency=2, max_retries=4).caption(images)
        assert all(c.text for c in got), got
        assert proxy.seen == 4 + 3  # each refused request was retried
        assert proxy.peak <= 2
    finally:
        proxy.close()

    proxy = FlakyProxy(server, failures=100, status=503)
    try:
        got = openai_captioner(proxy.url, max_retries=1).caption([[image_bytes(40, 40, "JPEG")]])
        assert got[0].reason == "endpoint_error" and "503" in got[0].detail
        assert proxy.seen == 2  # one try + one retry, then recorded on the row
    finally:
        proxy.close()


def test_openai_backend_records_an_unreachable_endpoint():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    got = openai_captioner(dead, max_retries=0, timeout_s=5).caption([[image_bytes(40, 40)]])
    assert got[0].reason == "endpoint_unreachable"


def test_secret_key_never_in_server_logs_or_errors(monkeypatch, server):
    monkeypatch.setenv("NEO_TEST_KEY", "s3cr3t-" + hashlib.sha1(os.urandom(8)).hexdigest())
    dead = f"http://127.0.0.1:{free_port()}/v1"
    c = openai_captioner(dead, api_key_env="NEO_TEST_KEY", max_retries=0, timeout_s=5)
    got = c.caption([[image_bytes(40, 40)]])
    assert os.environ["NEO_TEST_KEY"] not in got[0].detail
    assert os.environ["NEO_TEST_KEY"] not in repr(c.__dict__.get("settings"))


def test_openai_backend_sampling_settings_reach_the_server(server):
    gen = GenerationSpec(max_new_tokens=4, temperature=0.9, top_k=50, seed=3)
    c = OpenAICaptioner("neo-debug", "Say", gen, 178_956_970, OpenAISpec(endpoint=server))
    image = [[picture_png()]]
    first, again = c.caption(image)[0], c.caption(image)[0]
    assert first.text and first == again  # seeded sampling: the same draw
    other = OpenAICaptioner(
        "neo-debug", "Say", gen.model_copy(update={"top_p": 0.5}), 178_956_970,
        OpenAISpec(endpoint=server),
    ).caption(image)[0]  # fmt: skip
    assert other.reason == "endpoint_error" and "top_p" in other.detail  # a 400, on the row


def test_a_foreign_host_header_is_refused(server):
    """A loopback server answers only requests addressed to it: a web page that rebinds its own
    name to 127.0.0.1 sends its name as Host and is refused (as the shard browser does)."""
    base = server.rsplit("/v1", 1)[0]
    port = base.rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1:1"):
        r = httpx.get(f"{base}/health", headers={"Host": host}, timeout=10)
        assert r.status_code == 421, host
        assert "unexpected Host" in r.json()["error"]["message"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(f"{base}/health", headers={"Host": host}, timeout=10).status_code == 200


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_above_the_decode_cap_near_max_pixels_are_refused_unread(server):
    """The debug checkpoint's budget is 65,536 px: the decode cap is 4096 x 4096 px (not the
    packer's 179M px), so a 5000 x 5000 px header is refused before anything is decoded."""
    r = post(server, {"messages": [image_message(data_url(_png_header(5000, 5000)))]})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "image_too_many_pixels" in msg and "16777216" in msg
