"""A fault-injecting TCP proxy on loopback, for putting network trouble between Kafka clients and a broker.

The broker advertises the proxy's port (`EmbeddedBroker(advertised_port=...)`), so every client
connection, bootstrap and metadata-directed alike, passes through it. The proxy runs its own event
loop in a thread, so blocking test code (HTTP probes, `time.sleep`) does not stall the traffic, and
faults are switched from the test's thread:

- `cut()`: every open connection is closed and new ones are closed on accept, until `heal()`;
- `blackhole()`: connections stay open but nothing gets through (packets dropped: clients wait for
  their request timeouts);
- `delay(s)`: every chunk is held `s` seconds in each direction (order kept);
- `heal()`: back to forwarding untouched.

With `server_ssl` it terminates TLS: clients speak TLS to the proxy, the broker sees plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from streamer.broker import free_port


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # accepted and closed at once because the link was cut
    cut: int = 0  # connections closed by cut()
    forwarded_bytes: int = 0
    dropped_bytes: int = 0
    modes: list[str] = field(default_factory=list)  # every mode switched to, in order


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int | None = None,
                 server_ssl: ssl.SSLContext | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.server_ssl = server_ssl
        self.stats = ProxyStats()
        self._mode = "ok"  # ok | cut | blackhole
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    # ------------------------------------------------------------ control (from the test's thread)
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        self._call(self._set("cut", 0.0))

    def blackhole(self) -> None:
        self._call(self._set("blackhole", 0.0))

    def delay(self, seconds: float) -> None:
        self._call(self._set("ok", seconds))

    def heal(self) -> None:
        self._call(self._set("ok", 0.0))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ------------------------------------------------------------ the proxy (on its own loop)
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.server_ssl)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()

    async def _set(self, mode: str, delay: float) -> None:
        self._mode, self._delay = mode, delay
        self.stats.modes.append(mode if not delay else f"delay {delay}s")
        if mode == "cut":
            self.stats.cut += len(self._conns)
            self._close_all()

    def _close_all(self) -> None:
        for client, upstream in list(self._conns):
            for w in (client, upstream):
                with contextlib.suppress(Exception):
                    w.transport.abort()  # a reset, as a dead link or a killed broker looks to a client
        self._conns.clear()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._mode == "cut":
            self.stats.refused += 1
            c_writer.transport.abort()
            return
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            return
        pair = (c_writer, u_writer)
        self._conns.add(pair)
        try:
            await asyncio.gather(self._pump(c_reader, u_writer), self._pump(u_reader, c_writer),
                                 return_exceptions=True)
        finally:
            self._conns.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                writer.close()
                return
            if self._mode == "blackhole":
                self.stats.dropped_bytes += len(chunk)
                continue
            if self._delay:
                await asyncio.sleep(self._delay)
            writer.write(chunk)
            await writer.drain()
            self.stats.forwarded_bytes += len(chunk)


@contextlib.contextmanager
def proxied(upstream_port: int, **kw: object) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port, **kw)  # type: ignore[arg-type]
    with proxy:
        yield proxy
