"""``neo serve``'s app in process: request images are decoded in a worker thread, never on the
event loop (a large image would stall every other request meanwhile)."""

from __future__ import annotations

import asyncio
import base64
import threading

import torch
from fastapi.testclient import TestClient

from neo_data.encoding import images
from neo_data.encoding.tokens import load_tokenizer
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.serve import protocol
from neo_model.serve.app import create_app
from neo_model.serve.protocol import ServeSettings
from tests.helpers import image_bytes


def test_request_images_are_decoded_off_the_event_loop(monkeypatch):
    torch.manual_seed(0)
    model = NeoChatModel(debug()).eval()
    settings = ServeSettings("neo", 1024, 65536, max_new_tokens=2, default_max_tokens=2)
    calls = []
    real = images.open_image

    def spy(data: bytes, cap: int):
        try:
            asyncio.get_running_loop()
            calls.append(("event loop", threading.current_thread().name))
        except RuntimeError:
            calls.append(("worker", threading.current_thread().name))
        return real(data, cap)

    monkeypatch.setattr(protocol, "open_image", spy)
    url = "data:image/png;base64," + base64.b64encode(image_bytes(64, 48)).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]}]}  # fmt: skip
    with TestClient(create_app(model, load_tokenizer(), settings)) as client:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert [where for where, _ in calls] == ["worker"]
