"""The ``Host`` allowlist of the local web servers (``neo shards serve``, ``neo serve``).

A server bound to a loopback address answers only requests addressed to it by a loopback name:
a web page the user visits can rebind its own DNS name to 127.0.0.1 and then read the server
with the page's name as ``Host`` (DNS rebinding). A server bound to another address was exposed
on purpose and allows any ``Host`` (an empty allowlist).
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(bind_host: str, port: int) -> frozenset[str]:
    """The ``Host`` values a server bound to ``bind_host:port`` answers; empty (any) unless the
    address is loopback."""
    if not is_loopback(bind_host):
        return frozenset()
    shown = f"[{bind_host}]" if ":" in bind_host else bind_host
    return frozenset(f"{n}:{port}" for n in (shown, "localhost", "127.0.0.1", "[::1]"))


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header passes ``allowed`` (an empty set allows any)."""
    return not allowed or host in allowed
