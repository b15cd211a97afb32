"""Stand-in servers for tests and benchmarks that need a peer which misbehaves.

:class:`SilentListener` accepts TCP connections and never answers: what a hung server
looks like to a client. Whatever is aimed at it must give up on its own timeouts.
"""

from __future__ import annotations

import socket
import threading


class SilentListener:
    """A loopback TCP port that accepts connections and never answers: a hung server.

    For tests and benchmarks: probes and pools aimed at it must give up on their own
    timeouts. ``backlog`` bounds the connections queued before they are accepted.
    """

    def __init__(self, backlog: int = 16) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port: int = self.sock.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._accepted:
            conn.close()
