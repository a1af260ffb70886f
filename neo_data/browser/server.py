"""Serving the shard browser from a background thread, bound to one socket (``neo shards serve``
and the tests start and stop it themselves)."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from neo_data.browser.web import Browser, make_app
from neo_data.hostcheck import allowed_hosts


class BackgroundServer:
    """Serve :func:`make_app` from a thread (``with BackgroundServer(url) as s: s.base_url``).

    ``port=0`` binds a free port; :attr:`base_url` says which. Used by ``neo shards serve`` and
    by tests, which start and stop it themselves.
    """

    def __init__(self, url: str, host: str = "127.0.0.1", port: int = 0, max_depth: int = 3):
        browser = Browser(url, max_depth)  # errors about the URL surface here, before binding
        self.sock = socket.create_server((host, port))
        bound_host, bound_port = self.sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown}:{bound_port}"
        allowed = allowed_hosts(bound_host, bound_port)
        self.app = make_app(url, max_depth, allowed, browser=browser)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="neo-shards-serve", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except OSError as e:  # the socket failed while starting: report it to start()
            self._error = e
            self._started.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self._stop = asyncio.Event()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> BackgroundServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self.sock.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in ``neo shards serve``)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
