"""The openai backend's requests, as an OpenAI-compatible server receives them: every generation
setting is sent as configured (none dropped, none replaced by a greedy default), the images go
as data URLs of their bytes, the key as the bearer token, and an answer without content is
recorded on its row. A recording server on 127.0.0.1 stands in for the endpoint."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from neo_data.manifest.recaption import GenerationSpec, OpenAISpec
from neo_data.recaption.chat import OpenAICaptioner, chat_messages
from tests.helpers import image_bytes

pytest.importorskip("openai")

CAP = 178_956_970


class RecordingEndpoint:
    """``POST /v1/chat/completions``: records the JSON body and headers of every request and
    answers a chat completion whose content is ``answer`` (``None``: a null content)."""

    def __init__(self, answer: str | None = "a red square"):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(body)
                    endpoint.headers.append({k.lower(): v for k, v in self.headers.items()})
                data = json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200 if self.path == "/v1/chat/completions" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def as_sent(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def captioner(url: str, gen: GenerationSpec, **settings) -> OpenAICaptioner:
    return OpenAICaptioner(
        "served-model",
        "Describe it.",
        gen,
        CAP,
        OpenAISpec(endpoint=url, max_retries=0, **settings),
    )


def test_every_generation_setting_reaches_the_endpoint_as_configured():
    gen = GenerationSpec(max_new_tokens=37, temperature=0.7, top_p=0.85, top_k=23, seed=11)
    jpeg = image_bytes(40, 30, "JPEG")
    with RecordingEndpoint() as ep:
        got = captioner(ep.url, gen).caption([[jpeg]])
    assert [c.text for c in got] == ["a red square"]
    (body,) = ep.requests
    assert body["model"] == "served-model"
    assert body["max_tokens"] == 37
    assert body["temperature"] == 0.7  # sampled, not greedy
    assert body["top_p"] == 0.85
    assert body["top_k"] == 23  # the vLLM / neo serve extension, top level of the body
    assert body["seed"] == 11
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": as_sent(jpeg, "jpeg")}},
                {"type": "text", "text": "Describe it."},
            ],
        }
    ]  # the image's own bytes, not a re-encoding


def test_unset_settings_are_left_to_the_server_and_greedy_is_sent_as_zero():
    gen = GenerationSpec(max_new_tokens=5)  # temperature 0 (greedy), no top_p / top_k
    with RecordingEndpoint() as ep:
        captioner(ep.url, gen).caption([[image_bytes(32, 32)]])
    (body,) = ep.requests
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["seed"] == 0
    assert "top_p" not in body and "top_k" not in body


def test_each_sample_is_one_request_with_all_its_images_in_order():
    gen = GenerationSpec(max_new_tokens=3, temperature=1.0, seed=4)
    a, b, c = image_bytes(40, 40, "PNG"), image_bytes(50, 40, "WEBP"), image_bytes(30, 60, "JPEG")
    with RecordingEndpoint() as ep:
        got = captioner(ep.url, gen, max_concurrency=1).caption([[a, b], [c]])
    assert [x.text for x in got] == ["a red square"] * 2
    sent = sorted(
        [part["image_url"]["url"] for part in r["messages"][0]["content"][:-1]] for r in ep.requests
    )
    want = sorted([[as_sent(a, "png"), as_sent(b, "webp")], [as_sent(c, "jpeg")]])
    assert sent == want
    assert all(r["seed"] == 4 and r["temperature"] == 1.0 for r in ep.requests)


def test_a_rotated_image_goes_as_a_png_of_its_upright_pixels():
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    with RecordingEndpoint() as ep:
        captioner(ep.url, GenerationSpec()).caption([[buf.getvalue()]])
    url = ep.requests[0]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (20, 40)  # upright


def test_the_key_is_the_bearer_token_and_an_empty_answer_is_recorded(monkeypatch):
    monkeypatch.setenv("NEO_TEST_CHAT_KEY", "k-123")
    with RecordingEndpoint(answer=None) as ep:
        got = captioner(ep.url, GenerationSpec(), api_key_env="NEO_TEST_CHAT_KEY").caption(
            [[image_bytes(32, 32)]]
        )
    assert ep.headers[0]["authorization"] == "Bearer k-123"
    assert got[0].reason == "endpoint_error" and "no message content" in got[0].detail


def test_chat_messages_put_the_images_before_the_prompt():
    assert chat_messages("Say.", ["u1", "u2"]) == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "u1"}},
                {"type": "image_url", "image_url": {"url": "u2"}},
                {"type": "text", "text": "Say."},
            ],
        }
    ]
