"""A TCP proxy in front of PostgreSQL that a test cuts, to make real database faults: every
connection dropped and new ones refused for a while (an outage), or the connections dropped
at the moment a statement passes (``cut_at``), before the server sees it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import sqlalchemy as sa


class Proxy:
    def __init__(self, url: str) -> None:
        target = sa.make_url(url)
        self.url = url
        self._target = (target.host or "127.0.0.1", target.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down_until = 0.0
        self._trigger: tuple[bytes, float] | None = None
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, name="dbproxy", daemon=True).start()

    @property
    def proxied_url(self) -> str:
        """The database's URL through this proxy."""
        url = sa.make_url(self.url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def cut(self, seconds: float = 0.0) -> None:
        """Drop every connection now; refuse new ones for ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            dropped, self._open = self._open, set()
            self.cuts += 1
        for sock in dropped:
            _close(sock)

    def cut_at(self, statement: bytes, seconds: float = 0.0) -> None:
        """Once a client sends ``statement`` (bytes of its text), drop every connection
        before the server gets it, and refuse new ones for ``seconds``."""
        with self._lock:
            self._trigger = (statement, seconds)

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._trigger is not None

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                _close(client)
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if upstream and self._fires(tail, data):
                    return
                tail = data[-256:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def _fires(self, tail: bytes, data: bytes) -> bool:
        """Whether the armed statement ends in ``data`` (it may begin in ``tail``)."""
        with self._lock:
            if self._trigger is None:
                return False
            statement, seconds = self._trigger
            if statement not in tail[len(tail) - len(statement) + 1 :] + data:
                return False
            self._trigger = None
        self.cut(seconds)
        return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
