"""An HTTP-aware proxy in front of the S3 endpoint (moto) that answers a share of requests with faults:
503 SlowDown, 500 InternalError, a timeout, a reset connection, and 409 ConditionalRequestConflict on
conditional PUTs (`If-None-Match: *`), as AWS answers when two conditional writes race.

Why a proxy and why before forwarding: a fault is decided and answered here, *before* the request is
sent on, so a faulted request never reaches the server. What the server received is then exactly what
`forwarded`/`log` record, and "each object scored once" can be checked by counting the output PUTs
the server answered (`puts_to`, `objects_written`) rather than guessed from client retries.

    with FaultyS3(port, rates={"slowdown": 0.1, "reset": 0.03}, conflict_rate=0.3) as s3:
        ...  # point clients at s3.url
        assert s3.objects_written("/predictions/") == 50

Each client connection is HTTP/1.1 keep-alive on its own terms and has its own upstream connection,
reopened when the server closes it (moto's werkzeug closes after every response). Request bodies
(Content-Length or chunked) are read whole and forwarded with a Content-Length; `Expect: 100-continue`
is answered here and not forwarded. Responses are relayed as they come (Content-Length, chunked or
until close). Paths are recorded without the query string and percent-decoded (path-style S3, so
they read "/bucket/key").
"""

from __future__ import annotations

import functools
import io
import random
import select
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from tests.reliability.proxy import LoopbackServer

Kind = Literal["slowdown", "internal", "timeout", "reset", "conflict"]
KINDS: tuple[Kind, ...] = ("slowdown", "internal", "timeout", "reset", "conflict")

# kind -> (status, reason, S3 error code, message)
_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "conflict": (
        409,
        "Conflict",
        "ConditionalRequestConflict",
        "A conflicting conditional operation is currently in progress against this resource. Try again.",
    ),
}
_MAX_LINE = 65536
# not forwarded either way: this proxy answers Expect itself, re-frames request bodies with a Content-Length,
# and keeps each side's connection alive on its own terms
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "expect", "te", "upgrade"}
Headers = list[tuple[str, str]]


class Exchange(NamedTuple):
    """One request the server received and the status it answered (0: no answer, the upstream failed)."""

    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True)
class Rule:
    """Answer `kind` to a share `rate` of the requests it applies to: any method (or those in `methods`)
    and any path (or those `where(path)` accepts). A `conflict` rule applies only to PUTs carrying
    `If-None-Match: *`."""

    kind: Kind
    rate: float
    methods: Collection[str] | None = None
    where: Callable[[str], bool] | None = None

    def applies(self, method: str, path: str, headers: Headers) -> bool:
        if self.rate <= 0 or (self.methods is not None and method not in self.methods):
            return False
        if self.kind == "conflict" and not (method == "PUT" and _header(headers, "if-none-match") == "*"):
            return False
        return self.where is None or self.where(path)


class FaultyS3(LoopbackServer):
    """A fault-injecting HTTP proxy on 127.0.0.1 in front of `127.0.0.1:target_port`.

    `rates` maps kinds (slowdown, internal, timeout, reset) to the share of requests answered with
    them; `conflict_rate` is the share of conditional PUTs answered 409. `methods` and `where` (a
    predicate on the path) limit those rules; rules are tried in order, the first hit wins (one random
    draw per applicable rule, from one seeded RNG under a lock); `rules` can be edited at runtime, and `faults_enabled`
    switches all of them. `timeout` holds the connection `timeout_seconds` without answering, then
    closes it; `reset` closes it with an RST. `strip_if_none_match` forwards PUTs without their
    `If-None-Match` header: a store that ignores conditional writes.
    """

    def __init__(
        self,
        target_port: int,
        seed: int = 0,
        *,
        rates: Mapping[str, float] | None = None,
        conflict_rate: float = 0.0,
        methods: Collection[str] | None = None,
        where: Callable[[str], bool] | None = None,
        rules: list[Rule] | None = None,
        timeout_seconds: float = 2.0,
        strip_if_none_match: bool = False,
        port: int = 0,
    ) -> None:
        unknown = set(rates or {}) - set(KINDS[:4])
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS[:4]} (and conflict_rate)")
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self.rules: list[Rule] = list(rules or [])
        self.rules += [Rule(k, r, methods, where) for k, r in (rates or {}).items()]  # type: ignore[arg-type]
        if conflict_rate:
            self.rules.append(Rule("conflict", conflict_rate, methods, where))
        self.faults_enabled = True
        self.timeout_seconds = timeout_seconds
        self.strip_if_none_match = strip_if_none_match
        self.forwarded: Counter[tuple[str, str]] = Counter()
        self.log: list[Exchange] = []
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FaultyS3:
        self._stopped.clear()
        self._listen(128)
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (a held `timeout` ends at once)."""
        self._stopped.set()
        if self._listener:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> FaultyS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counts ----------------------------------------------------------------------------------

    def puts_to(self, substring: str) -> int:
        """Successful (2xx) PUTs the server received to a path containing `substring`; multipart
        parts are PUTs too (see `objects_written` for objects created)."""
        with self._lock:
            return sum(1 for e in self.log if e.method == "PUT" and 200 <= e.status < 300 and substring in e.path)

    def objects_written(self, substring: str) -> int:
        """Objects the server created under paths containing `substring`: successful PUTs that are not
        multipart parts (UploadPart, UploadPartCopy), plus completed multipart uploads (POST ?uploadId)."""
        with self._lock:
            return sum(
                1
                for e in self.log
                if 200 <= e.status < 300
                and substring in e.path
                and (
                    (e.method == "PUT" and "uploadId" not in parse_qs(e.query))
                    or (e.method == "POST" and "uploadId" in parse_qs(e.query))
                )
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.forwarded.clear()
            self.log.clear()
            self.injected.clear()

    # -- serving ---------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="faulty-s3-conn").start()

    def _decide(self, method: str, path: str, headers: Headers) -> Kind | None:
        if not self.faults_enabled:
            return None
        with self._lock:
            for rule in list(self.rules):
                if rule.applies(method, path, headers) and (rule.rate >= 1 or self._rng.random() < rule.rate):
                    self.injected[rule.kind] += 1
                    return rule.kind
        return None

    def _record(self, method: str, path: str, query: str, status: int) -> None:
        with self._lock:
            self.forwarded[(method, path)] += 1
            self.log.append(Exchange(method, path, query, status))

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream: _Upstream | None = None
        rst = False
        try:
            while not self._stopped.is_set():
                request = _read_request(reader, client)
                if request is None:
                    return
                method, target, version, headers, body = request
                split = urlsplit(target)
                path = unquote(split.path)
                keep_alive = _keep_alive(version, headers)
                kind = self._decide(method, path, headers)
                if kind in ("timeout", "reset"):
                    if kind == "timeout":
                        self._stopped.wait(self.timeout_seconds)
                    else:  # linger 0: close() sends an RST, not a FIN
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        rst = True
                    return
                if kind is not None:
                    client.sendall(_error_response(kind, method, keep_alive))
                    if not keep_alive:
                        return
                    continue
                drop = _HOP_BY_HOP | {"transfer-encoding", "content-length"}
                headers = [(k, v) for k, v in headers if k.lower() not in drop]
                if body or method in ("PUT", "POST", "PATCH"):
                    headers.append(("Content-Length", str(len(body))))
                if self.strip_if_none_match and method == "PUT":
                    headers = [(k, v) for k, v in headers if k.lower() != "if-none-match"]
                if upstream is None or upstream.dropped():
                    if upstream is not None:
                        upstream.close()
                    upstream = _Upstream(socket.create_connection(self.target, timeout=60), self)
                # recorded before the response goes on, so a client that has its answer finds it counted
                record = functools.partial(self._record, method, path, split.query)
                try:
                    upstream.send(method, target, headers, body)
                    upstream_open, client_open = upstream.relay(method, client, keep_alive, record)
                except OSError:
                    if not upstream.answered:
                        record(0)  # sent, maybe received: counted, but never as a success
                    raise
                if not upstream_open:
                    upstream.close()
                    upstream = None
                if not (keep_alive and client_open):
                    return
        except (OSError, ValueError):  # a client or server gone, or not speaking HTTP: drop the connection
            return
        finally:
            if upstream is not None:
                upstream.close()
            reader.close()
            if rst:
                client.close()
            else:
                _shutdown(client)
            with self._lock:
                self._sockets.discard(client)


class _Upstream:
    """One keep-alive connection to the server."""

    def __init__(self, sock: socket.socket, owner: FaultyS3) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.owner = owner
        self.answered = False
        with owner._lock:
            owner._sockets.add(sock)

    def dropped(self) -> bool:
        """The server closed (or wrote unasked): do not reuse; checked before sending, as urllib3 does."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def relay(
        self, method: str, client: socket.socket, keep_alive: bool, record: Callable[[int], None]
    ) -> tuple[bool, bool]:
        """Copy one response to the client, calling `record(status)` first: (upstream reusable, client
        connection reusable).

        Connection headers are hop-by-hop: the client's keep-alive does not follow the server's (moto's
        werkzeug closes after every response; S3 does not)."""
        while True:
            status_line = self.reader.readline(_MAX_LINE)
            if not status_line:
                raise ConnectionError("server closed the connection without answering")
            version, status = _parse_status(status_line)
            _, headers = _read_headers(self.reader)
            if status >= 200:
                break  # 1xx are dropped: Expect is answered here, never forwarded
        length = _header(headers, "content-length")
        chunked = "chunked" in (_header(headers, "transfer-encoding") or "").lower()
        bodiless = method == "HEAD" or status in (204, 304)
        keep_alive = keep_alive and (bodiless or chunked or length is not None)
        relayed = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        relayed.append(("Connection", "keep-alive" if keep_alive else "close"))
        self.answered = True
        record(status)
        client.sendall(status_line + _head_bytes(relayed))
        if bodiless:
            pass
        elif chunked:
            _copy_chunked(self.reader, client.sendall)
        elif length is not None:
            _copy(self.reader, client, int(length))
        else:
            while data := self.reader.read1(65536):
                client.sendall(data)
            return False, False
        return _keep_alive(version, headers), keep_alive

    def send(self, method: str, target: str, headers: Headers, body: bytes) -> None:
        self.answered = False
        self.sock.sendall(f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + _head_bytes(headers) + body)

    def close(self) -> None:
        self.reader.close()
        _shutdown(self.sock)
        with self.owner._lock:
            self.owner._sockets.discard(self.sock)


# -- HTTP/1.1 framing ----------------------------------------------------------------------------


def _head_bytes(headers: Headers) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def _header(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return None


def _keep_alive(version: str, headers: Headers) -> bool:
    connection = (_header(headers, "connection") or "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _read_headers(reader: io.BufferedReader) -> tuple[bytes, Headers]:
    raw, headers = b"", []
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise ConnectionError("connection closed inside the headers")
        raw += line
        if line in (b"\r\n", b"\n"):
            return raw, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _read_request(reader: io.BufferedReader, client: socket.socket) -> tuple[str, str, str, Headers, bytes] | None:
    """The next request on the connection, its body read whole; None when the client is done."""
    line = reader.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):
        line = reader.readline(_MAX_LINE)
    if not line:
        return None
    method, target, version = line.decode("latin-1").split()
    _, headers = _read_headers(reader)
    if (_header(headers, "expect") or "").lower() == "100-continue" and version != "HTTP/1.0":
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in (_header(headers, "transfer-encoding") or "").lower():
        body = io.BytesIO()
        _copy_chunked(reader, None, body.write)
        return method, target, version, headers, body.getvalue()
    length = int(_header(headers, "content-length") or 0)
    body = reader.read(length) if length else b""
    if len(body) != length:
        raise ConnectionError("connection closed inside the body")
    return method, target, version, headers, body


def _parse_status(line: bytes) -> tuple[str, int]:
    parts = line.decode("latin-1").split(None, 2)
    return parts[0], int(parts[1])


def _copy(reader: io.BufferedReader, sink: socket.socket, length: int) -> None:
    while length > 0:
        data = reader.read1(min(length, 65536))
        if not data:
            raise ConnectionError("connection closed inside the body")
        sink.sendall(data)
        length -= len(data)


def _copy_chunked(
    reader: io.BufferedReader, raw: Callable[[bytes], object] | None, data: Callable[[bytes], object] | None = None
) -> None:
    """Read a chunked body: its framing (chunks, last chunk, trailers) goes to `raw`, its data to `data`."""
    while True:
        size_line = reader.readline(_MAX_LINE)
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            raw_trailers, _ = _read_headers(reader)
            if raw:
                raw(size_line + raw_trailers)
            return
        chunk = reader.read(size + 2)
        if len(chunk) != size + 2:
            raise ConnectionError("connection closed inside a chunk")
        if raw:
            raw(size_line + chunk)
        if data:
            data(chunk[:-2])


def _error_response(kind: str, method: str, keep_alive: bool) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTYS3</RequestId><HostId>faulty-s3</HostId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: FAULTYS3\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
