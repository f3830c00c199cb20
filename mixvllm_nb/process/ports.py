"""Ports: pick a free one, refuse a busy one before launching, wait for one to be released."""

from __future__ import annotations

import socket
import time

from ..errors import PortInUseError


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Return True when a server could bind ``host:port`` (as uvicorn does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(host: str, port: int) -> None:
    """Raise PortInUseError with a one-line message when ``host:port`` is taken."""
    if not port_is_free(host, port):
        raise PortInUseError(
            f"server.port: port {port} on {host} is already in use; "
            "choose another port or leave it out to pick a free one"
        )


def wait_port_free(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait until nothing listens on ``host:port``; return whether it was released in time."""
    deadline = time.monotonic() + timeout
    while True:
        if port_is_free(host, port):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait until nothing accepts connections at ``host:port`` (another machine's port); return whether in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((connect_host(host), port), timeout=1).close()
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def connect_host(host: str) -> str:
    """Return the address a local client should use for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """Return ``host`` as it goes into a URL (IPv6 literals in brackets)."""
    host = connect_host(host)
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Return True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
