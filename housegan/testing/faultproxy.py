"""A small TCP proxy that makes a loopback S3 server behave like a remote, unreliable one.

It sits on a free loopback port in front of an HTTP endpoint and, per request, can

* add latency: each request is held ``latency_s`` before it is forwarded (S3 is ~20 ms away,
  loopback is not, so throughput figures are only honest through this);
* stall a response: the connection stays open and nothing is sent back;
* cut a response: the first ``after_bytes`` bytes are sent, then the connection is closed;
* go down: every live connection is dropped and new ones are refused (the port is closed, as
  when the endpoint's host is down) until ``up()`` listens on the same port again; ``down_at``
  aims this at the n-th matching request, so a test can take S3 away in the middle of a stage.

Every request line is kept in ``log`` (decoded), so a test can count what was fetched.

Faults are armed for the next N requests whose request line matches a regex, so a test can aim
at object GETs and leave listings alone. HTTP is not parsed beyond that: with keep-alive and no
pipelining (what botocore does), the first client bytes after a response start a new request.

    with FaultProxy("http://127.0.0.1:8333", latency_s=0.02) as proxy:
        proxy.stall_next(1, match=r"^GET /bucket/raw/")
        ...  # point the client at proxy.endpoint

Run alone (``python -m housegan.testing.faultproxy UPSTREAM --latency-ms 20``) it prints its
endpoint and serves until killed, so a benchmark can keep it out of the measured process.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

CHUNK = 64 * 1024
DOWN_POLL_S = 0.05  # how often a down proxy's accept loop checks for up() or stop()


@dataclass
class Fault:
    kind: str  # "stall" or "cut"
    pattern: re.Pattern[bytes]
    after_bytes: int = 0


class _Connection:
    """One client connection and its upstream twin, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.awaiting_request = True  # the next client bytes start a new request
        self.fault: Fault | None = None  # applies to the response now expected
        self.sent_in_response = 0

    def start(self) -> None:
        for target in (self._client_to_upstream, self._upstream_to_client):
            threading.Thread(target=target, daemon=True).start()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.proxy._forget(self)

    def _client_to_upstream(self) -> None:
        try:
            while chunk := self.client.recv(CHUNK):
                if self.awaiting_request:
                    self.awaiting_request = False
                    line = chunk.split(b"\r\n", 1)[0]
                    if self.proxy._note_request(line):
                        break  # this request found the endpoint down: drop it unanswered
                    self.fault = self.proxy._take_fault(line)
                    self.sent_in_response = 0
                    if self.proxy.latency_s:
                        time.sleep(self.proxy.latency_s)
                self.upstream.sendall(chunk)
        except OSError:
            pass
        self.close()

    def _upstream_to_client(self) -> None:
        try:
            while chunk := self.upstream.recv(CHUNK):
                self.awaiting_request = True
                if self.fault is not None and self.fault.kind == "stall":
                    continue  # swallow: the client sees an open, silent connection
                if self.fault is not None and self.fault.kind == "cut":
                    room = self.fault.after_bytes - self.sent_in_response
                    self.client.sendall(chunk[: max(room, 0)])
                    if len(chunk) >= room:
                        break
                else:
                    self.client.sendall(chunk)
                self.sent_in_response += len(chunk)
        except OSError:
            pass
        self.close()


class FaultProxy:
    """A threaded TCP proxy with per-request latency, armed stall/cut faults and outages."""

    def __init__(self, upstream: str, *, latency_s: float = 0.0, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency_s = latency_s
        self.requests = 0
        self.log: list[str] = []  # every request line, in arrival order
        self.fired: dict[str, int] = {"stall": 0, "cut": 0, "down": 0}
        self._faults: deque[Fault] = deque()
        self._down_trigger: tuple[re.Pattern[bytes], int] | None = None  # (match, countdown)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.1)  # accept() wakes up to notice stop()
        self._address = self._server.getsockname()[:2]
        self._stopping = threading.Event()
        self._down = threading.Event()
        self.endpoint = f"http://{host}:{self._address[1]}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    # ---- arming faults ---------------------------------------------------------------------

    def stall_next(self, n: int = 1, *, match: str = "") -> None:
        """The next ``n`` matching requests get no response; their connections stay open."""
        self._arm(n, Fault("stall", re.compile(match.encode())))

    def cut_next(self, n: int = 1, *, after_bytes: int = 0, match: str = "") -> None:
        """The next ``n`` matching responses are closed after ``after_bytes`` bytes."""
        self._arm(n, Fault("cut", re.compile(match.encode()), after_bytes))

    def _arm(self, n: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * n)

    def down_at(self, n: int = 1, *, match: str = "") -> None:
        """The ``n``-th matching request from now finds the endpoint down: it is dropped
        unanswered, and every connection is refused until ``up()``."""
        with self._lock:
            self._down_trigger = (re.compile(match.encode()), n)

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def down(self) -> None:
        """Close the port and every live connection: clients get refused connections."""
        with self._lock:
            self._down_trigger = None
            if self._down.is_set():
                return
            self._down.set()
            self.fired["down"] += 1
            connections = list(self._connections)
        self._server.close()  # the accept loop sees OSError and waits for up()
        for connection in connections:
            connection.close()

    def up(self) -> None:
        """Listen on the same port again (the endpoint URL stays valid)."""
        with self._lock:
            if not self._down.is_set():
                return
            self._server = socket.create_server(self._address)
            self._server.settimeout(0.1)
            self._down.clear()

    def _note_request(self, request_line: bytes) -> bool:
        """Log a request; True if it finds (or takes) the endpoint down."""
        with self._lock:
            self.requests += 1
            self.log.append(request_line.decode("latin-1"))
            trigger, goes_down = self._down_trigger, False
            if trigger is not None and trigger[0].search(request_line):
                goes_down = trigger[1] <= 1
                self._down_trigger = None if goes_down else (trigger[0], trigger[1] - 1)
        if goes_down:
            self.down()
        return goes_down or self._down.is_set()

    def _take_fault(self, request_line: bytes) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.pattern.search(request_line):
                    self._faults.remove(fault)
                    self.fired[fault.kind] += 1
                    return fault
        return None

    # ---- serving ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._down.clear()
        self._thread.join(timeout=5)
        self._server.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            if self._down.is_set():
                self._stopping.wait(DOWN_POLL_S)
                continue
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._down.is_set():
                    continue  # closed by down(): wait for up()
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, upstream)
            with self._lock:
                self._connections.add(connection)
            connection.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP proxy adding per-request latency")
    parser.add_argument("upstream", help="e.g. http://127.0.0.1:8333")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    with FaultProxy(args.upstream, latency_s=args.latency_ms / 1000) as proxy:
        print(proxy.endpoint, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
