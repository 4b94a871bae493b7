"""A TCP proxy on 127.0.0.1 between a test's runs and the server it started (S3, MLflow).

It forwards everything, records the `METHOD /path` of every HTTP request in order, can hold
the one request `hold` names (forwarding only half the bytes it arrived with: an upload cut
short, for a kill during it), and `stop()` cuts every connection and refuses new ones (a server
that goes away mid-run). Nothing of the server or its client is mocked.
"""

from __future__ import annotations

import re
import socket
import threading


class Proxy:
    """A TCP proxy to the server on `target`: records `METHOD /path` of every request, holds the
    request `hold` names (after forwarding half of the bytes it arrived with), and stops on `stop()`."""

    REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/[^ ?]*)(\?\S*)? HTTP/1\.1\r\n")

    def __init__(self, target: int) -> None:
        self.target = target
        self.requests: list[str] = []
        self.hold: str | None = None
        self.held = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        tail, holding = b"", False
        try:
            while data := client.recv(1 << 16):
                if holding:
                    continue  # the held request never reaches the server whole
                seen = tail + data
                for match in self.REQUEST_LINE.finditer(seen):
                    if match.end() <= len(tail):
                        continue  # recorded with the previous chunk
                    request = f"{match.group(1).decode()} {match.group(2).decode()}"
                    self.requests.append(request)
                    holding = holding or request == self.hold
                upstream.sendall(data[: len(data) // 2] if holding else data)
                if holding:
                    self.held.set()
                tail = seen[-300:]
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        """Refuse new connections (the open ones end with their peers)."""
        self._server.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        for connection in [self._server, *self._sockets]:  # shutdown first: close alone leaves accept() listening
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
