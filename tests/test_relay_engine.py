"""The relay engine over real sockets: byte-exact, backpressure, cancellation, counters.

Each test is its own trio run and therefore gets a fresh engine
(``relay.engine()`` is per run). The proxy's side of every connection is a
real socket wrapped like the session wraps it (PlainStream, TLSStream); the
test plays both peers on the other ends.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from pgtls_proxy import relay as relay_mod
from pgtls_proxy.ca import authority
from pgtls_proxy.netio import PlainStream, TLSStream
from pgtls_proxy.relay import MAX_READ, TLS_READ, RelayResult, engine, relay_session

Stream = PlainStream | TLSStream

# Generous upper bound on any single step; a stuck relay fails instead of hanging.
STEP = 5.0
# How long a blocked sender must stay unwritable to count as held back.
STUCK = 0.2


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class FakeCounter:
    """A prometheus counter child as far as the relay is concerned: ``inc(amount)``.

    Like a real one it may be called from any thread, so it only touches trio
    through the run's token when called from outside trio.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.amounts: list[float] = []
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self._waiters: list[tuple[float, trio.Event]] = []

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        with self._lock:
            self.total += amount
            self.amounts.append(amount)
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:  # not in trio's thread
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass
        else:
            self._wake()

    def _wake(self) -> None:
        for target, event in self._waiters:
            if self.total >= target:
                event.set()

    async def reached(self, target: float) -> None:
        """Return once the counter holds at least ``target``."""
        event = trio.Event()
        self._waiters.append((target, event))
        self._wake()
        await event.wait()


# ------------------------------------------------------------------ TLS material


@dataclass(frozen=True)
class TLSContexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSContexts:
    """A fresh CA, a server certificate for "localhost" and a client certificate."""
    d: Path = tmp_path_factory.mktemp("relay-pki")
    authority.init_ca(d)
    server_cert, server_key = authority.issue_server(d, "localhost")
    client_cert, client_key = authority.issue_client(d, "alice")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    server.load_cert_chain(server_cert, server_key)
    server.load_verify_locations(cafile=d / "ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=d / "ca.crt")
    client.load_cert_chain(client_cert, client_key)
    return TLSContexts(server, client)


# ------------------------------------------------------------------ connections


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Every socket a test makes; closed after the test's trio run."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname()[:2])
        b, _ = listener.accept()
    return a, b


@dataclass
class Link:
    """client <-> client_proxy [relay] backend_proxy <-> backend."""

    client: Stream  # the test, playing the client
    client_proxy: Stream  # given to the relay
    backend_proxy: Stream  # given to the relay
    backend: Stream  # the test, playing the backend


async def _handshake(a: TLSStream, b: TLSStream) -> None:
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.handshake)
            nursery.start_soon(b.handshake)


async def make_link(
    kind: str, sockets: list[socket.socket], tls: TLSContexts | None = None
) -> Link:
    """kind: "unix" (socketpairs), "tcp" (loopback), "tls" (TLS client side over
    socketpairs), "tls-both" (TLS on the client and on the backend side)."""
    pair = tcp_pair if kind == "tcp" else socket.socketpair
    c_peer, c_proxy = pair()
    b_proxy, b_peer = pair()
    sockets += [c_peer, c_proxy, b_proxy, b_peer]
    client: Stream
    client_proxy: Stream
    backend: Stream
    backend_proxy: Stream
    if kind in ("tls", "tls-both"):
        assert tls is not None
        client = TLSStream.wrap(c_peer, tls.client, server_side=False, server_hostname="localhost")
        client_proxy = TLSStream.wrap(c_proxy, tls.server, server_side=True)
        sockets += [client.sock, client_proxy.sock]
        await _handshake(client, client_proxy)
    else:
        client, client_proxy = PlainStream(c_peer), PlainStream(c_proxy)
    if kind == "tls-both":
        assert tls is not None
        backend_proxy = TLSStream.wrap(
            b_proxy, tls.client, server_side=False, server_hostname="localhost"
        )
        backend = TLSStream.wrap(b_peer, tls.server, server_side=True)
        sockets += [backend.sock, backend_proxy.sock]
        await _handshake(backend_proxy, backend)
    else:
        backend_proxy, backend = PlainStream(b_proxy), PlainStream(b_peer)
    return Link(client, client_proxy, backend_proxy, backend)


async def read_exactly(stream: Stream, n: int) -> bytes:
    out = bytearray()
    buf = memoryview(bytearray(65536))
    while len(out) < n:
        got = await stream.recv_into(buf[: min(len(buf), n - len(out))])
        if not got:
            raise AssertionError(f"end of stream after {len(out)} of {n} bytes")
        out += buf[:got]
    return bytes(out)


class RelayTask:
    """Runs ``relay_session()`` in a nursery task; ``done`` is set when it returned."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.c2b = FakeCounter()
        self.b2c = FakeCounter()
        self.result: RelayResult | None = None
        self.done = trio.Event()
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            self.result = await relay_session(
                self.link.client_proxy, self.link.backend_proxy, self.c2b, self.b2c
            )
        self.done.set()

    async def wait(self) -> RelayResult:
        with trio.fail_after(STEP):
            await self.done.wait()
        assert self.result is not None
        return self.result


def start_relay(nursery: trio.Nursery, link: Link) -> RelayTask:
    task = RelayTask(link)
    nursery.start_soon(task.run)
    return task


def only_relay() -> relay_mod._RelayedSession:
    """The single relay the engine runs (white-box, for the engine's own state)."""
    relays = {id(r): r for r, _, _ in engine()._fds.values()}
    assert len(relays) == 1, relays
    return next(iter(relays.values()))


# ------------------------------------------------------------------ 1. both ways, byte-exact


def small_buffers(link: Link) -> None:
    """Fixed, small socket buffers: loopback autotuning would take megabytes."""
    for stream in (link.client, link.client_proxy, link.backend_proxy, link.backend):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            stream.sock.setsockopt(socket.SOL_SOCKET, opt, 65536)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["unix", "tcp", "tls", "tls-both"])
async def test_bytes_flow_both_ways_byte_exact(
    kind: str, sockets: list[socket.socket], tls: TLSContexts
) -> None:
    up, down = payload(3_000_000, 1), payload(3_500_000, 2)
    link = await make_link(kind, sockets, tls)
    backend_got: list[bytes] = []
    client_got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        with trio.fail_after(STEP):
            async with trio.open_nursery() as peers:
                peers.start_soon(link.client.send_all, up)
                peers.start_soon(link.backend.send_all, down)

                async def backend_reads() -> None:
                    backend_got.append(await read_exactly(link.backend, len(up)))

                async def client_reads() -> None:
                    client_got.append(await read_exactly(link.client, len(down)))

                peers.start_soon(backend_reads)
                peers.start_soon(client_reads)
        assert not task.done.is_set()
        assert engine().active == 1
        await link.client.aclose()
        result = await task.wait()
    assert backend_got == [up]
    assert client_got == [down]
    assert result.ended_by == "client"
    assert result.error == ""
    assert (result.bytes_in, result.bytes_out) == (len(up), len(down))
    assert (task.c2b.total, task.b2c.total) == (len(up), len(down))
    assert engine().active == 0


# ------------------------------------------------------------------ 2. who ended it


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["unix", "tcp", "tls"])
@pytest.mark.parametrize("closer", ["client", "backend"])
async def test_ended_by_the_side_that_closed(
    kind: str, closer: str, sockets: list[socket.socket], tls: TLSContexts
) -> None:
    link = await make_link(kind, sockets, tls)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        # One round trip first, so the relay is demonstrably running.
        await link.client.send_all(b"ping")
        with trio.fail_after(STEP):
            assert await read_exactly(link.backend, 4) == b"ping"
        await link.backend.send_all(b"pong!")
        with trio.fail_after(STEP):
            assert await read_exactly(link.client, 5) == b"pong!"
        # Last words, then close: they arrive before the relay ends.
        if closer == "client":
            await link.client.send_all(b"bye")
            await link.client.aclose()
            with trio.fail_after(STEP):
                assert await read_exactly(link.backend, 3) == b"bye"
        else:
            await link.backend.send_all(b"FATAL")
            await link.backend.aclose()
            with trio.fail_after(STEP):
                assert await read_exactly(link.client, 5) == b"FATAL"
        result = await task.wait()
    assert result.ended_by == closer
    assert result.error == ""
    in_, out = (7, 5) if closer == "client" else (4, 10)
    assert (result.bytes_in, result.bytes_out) == (in_, out)
    assert (task.c2b.total, task.b2c.total) == (in_, out)
    # The relay leaves closing to its caller: the surviving side is still open.
    survivor = link.backend_proxy if closer == "client" else link.client_proxy
    assert survivor.sock.fileno() != -1


# ------------------------------------------------------------------ 3. backpressure


async def fill_until_stuck(sender: socket.socket, data: bytes) -> int:
    """Send ``data`` without blocking until the sender stays stuck although the
    proxy has had every chance to move bytes on. Returns the bytes sent."""
    sent = 0
    while sent < len(data):
        chunk = data[sent : sent + 65536]
        try:
            sent += sender.send(chunk)
            continue
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        # When the engine is a trio task, it has read all it is willing to
        # read once every task is blocked; when it is a thread of its own,
        # only time tells: the sender must not become writable again.
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(STUCK) as wait:
            await trio.lowlevel.wait_writable(sender)
        if wait.cancelled_caught:
            return sent
        # Writable again: go on (a TLS write that wanted to write is repeated
        # with the same bytes, as OpenSSL requires).
    raise AssertionError(f"all {len(data)} bytes went through while nobody read them")


@contextlib.contextmanager
def engine_state() -> Iterator[relay_mod._RelayedSession]:
    """The single relay the engine runs, to inspect its state (white-box).

    Under the engine's lock when it has one (an engine thread).
    """
    lock = getattr(engine(), "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        yield only_relay()


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["unix", "tls"])
@pytest.mark.parametrize("direction", ["c2b", "b2c"])
async def test_backpressure_pauses_the_source_until_the_destination_drains(
    kind: str, direction: str, sockets: list[socket.socket], tls: TLSContexts
) -> None:
    link = await make_link(kind, sockets, tls)
    if direction == "c2b":
        src, dst_proxy, dst = link.client, link.backend_proxy, link.backend
        max_read = TLS_READ
    else:
        src, dst_proxy, dst = link.backend, link.client_proxy, link.client
        max_read = MAX_READ
    data = payload(4_000_000, 3)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        await trio.testing.wait_all_tasks_blocked()
        assert engine().active == 1
        with trio.fail_after(STEP):
            sent = await fill_until_stuck(src.sock, data)

        # Black box: the source's sender is blocked, and all the proxy can hold
        # besides the kernel buffers on either side is one read.
        kernel = sum(
            s.getsockopt(socket.SOL_SOCKET, opt)
            for s in (src.sock, dst_proxy.sock)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF)
        )
        assert sent <= 2 * kernel + max_read, (sent, kernel)

        # White box: the direction holds bytes and its source is not being read.
        with engine_state() as r:
            pipe, reverse = (r.c2b, r.b2c) if direction == "c2b" else (r.b2c, r.c2b)
            assert 0 < len(pipe.pending) <= max_read
            assert not pipe.mask & select.EPOLLIN  # its source is not read
            assert reverse.mask & select.EPOLLOUT  # its destination is watched
        assert not task.done.is_set()

        # The reader drains: everything arrives, intact and in order.
        got: list[bytes] = []

        async def drain() -> None:
            got.append(await read_exactly(dst, len(data)))

        with trio.fail_after(STEP):
            async with trio.open_nursery() as io:
                io.start_soon(drain)
                # Restart at ``sent``: for TLS that repeats the write that wanted
                # to write, with the same leading bytes, as OpenSSL requires.
                io.start_soon(src.send_all, data[sent:])
        assert got == [data]
        with engine_state() as r:
            assert not pipe.pending
            assert pipe.mask & select.EPOLLIN

        await link.client.aclose()
        result = await task.wait()
    total = result.bytes_in if direction == "c2b" else result.bytes_out
    assert total == len(data)
    assert result.ended_by == "client"


@pytest.mark.trio
async def test_paused_source_that_closes_still_delivers_everything(
    sockets: list[socket.socket],
) -> None:
    """TCP: the client sends more than fits and closes while its reads are paused;
    the close is seen only after the backend has taken every byte."""
    link = await make_link("tcp", sockets)
    small_buffers(link)
    data = payload(3_000_000, 4)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        with trio.fail_after(STEP):
            sent = await fill_until_stuck(link.client.sock, data)
        with engine_state() as r:
            assert r.c2b.pending
        got: list[bytes] = []

        async def client_sends_rest_and_closes() -> None:
            await link.client.send_all(data[sent:])
            await link.client.aclose()

        async def drain() -> None:
            got.append(await read_exactly(link.backend, len(data)))

        with trio.fail_after(STEP):
            async with trio.open_nursery() as io:
                io.start_soon(client_sends_rest_and_closes)
                io.start_soon(drain)
        result = await task.wait()
    assert got == [data]
    assert result.ended_by == "client"
    assert result.error == ""
    assert result.bytes_in == len(data)


@pytest.mark.trio
@pytest.mark.parametrize("how", ["unix-close", "tcp-reset"])
async def test_a_paused_source_that_hangs_up_does_not_spin_the_engine(
    how: str, sockets: list[socket.socket]
) -> None:
    """The client's reads are paused (the backend is not reading) when the client
    goes away with bytes still unread in the proxy's socket: an AF_UNIX close or a
    TCP reset both raise EPOLLHUP, which epoll reports even for a paused socket
    (interest 0), level-triggered. The engine must neither spin on it nor corrupt
    what it does deliver; the relay ends once the backend drains."""
    link = await make_link("unix" if how == "unix-close" else "tcp", sockets)
    small_buffers(link)
    data = payload(3_000_000, 8)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        with trio.fail_after(STEP):
            sent = await fill_until_stuck(link.client.sock, data)
        with engine_state() as r:
            assert r.c2b.pending
        if how == "tcp-reset":
            # Close with RST instead of FIN.
            link.client.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        cpu = time.process_time()
        await link.client.aclose()
        # A measurement window, not synchronisation: a busy engine burns a core.
        await trio.sleep(0.3)
        cpu = time.process_time() - cpu
        assert cpu < 0.1, f"{cpu:.2f} s of CPU in 0.3 s while nothing could move"

        # The backend reads until the relay has ended, then takes what is left.
        got = bytearray()
        buf = memoryview(bytearray(65536))

        async def backend_reads() -> None:
            while True:
                got.extend(buf[: await link.backend.recv_into(buf)])

        async with trio.open_nursery() as io:
            io.start_soon(backend_reads)
            result = await task.wait()
            io.cancel_scope.cancel()
        while True:
            try:
                got.extend(buf[: link.backend.sock.recv_into(buf)])
            except BlockingIOError:
                break
    assert result.ended_by == "client"
    assert 0 < len(got) <= sent
    assert bytes(got) == data[: len(got)]


# ------------------------------------------------------------------ 4. cancellation


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["unix", "tls"])
async def test_cancellation_removes_the_sockets_and_leaves_them_usable(
    kind: str, sockets: list[socket.socket], tls: TLSContexts
) -> None:
    link = await make_link(kind, sockets, tls)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        await link.client.send_all(b"relayed")
        with trio.fail_after(STEP):
            assert await read_exactly(link.backend, 7) == b"relayed"
        assert engine().active == 1
        task.scope.cancel()
        with trio.fail_after(STEP):
            await task.done.wait()
    assert task.scope.cancelled_caught
    assert task.result is None
    assert engine().active == 0
    assert not engine()._fds

    # The caller owns the sockets again: bytes are no longer taken by the engine.
    for s in (link.client_proxy, link.backend_proxy):
        assert s.sock.fileno() != -1
    await link.client.send_all(b"to the proxy")
    await link.backend.send_all(b"from the backend")
    with trio.fail_after(STEP):
        assert await read_exactly(link.client_proxy, 12) == b"to the proxy"
        assert await read_exactly(link.backend_proxy, 16) == b"from the backend"
        await link.client_proxy.send_all(b"to the client")
        assert await read_exactly(link.client, 13) == b"to the client"

    # And they can be relayed again (a socket still in the epoll set could not).
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        await link.backend.send_all(b"again")
        with trio.fail_after(STEP):
            assert await read_exactly(link.client, 5) == b"again"
        await link.backend.aclose()
        result = await task.wait()
    assert result.ended_by == "backend"
    assert result.bytes_out == 5


@pytest.mark.trio
async def test_cancellation_while_paused_removes_the_sockets(
    sockets: list[socket.socket],
) -> None:
    link = await make_link("unix", sockets)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        with trio.fail_after(STEP):
            await fill_until_stuck(link.client.sock, payload(4_000_000, 5))
        with engine_state() as r:
            assert r.c2b.pending
        task.scope.cancel()
        with trio.fail_after(STEP):
            await task.done.wait()
    assert engine().active == 0
    assert not engine()._fds
    # What the proxy had read but not passed on stays counted.
    assert task.c2b.total > 0


# ------------------------------------------------------------------ 5. bytes OpenSSL already holds


def readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


@pytest.mark.trio
async def test_plaintext_already_decrypted_is_relayed_without_socket_activity(
    sockets: list[socket.socket], tls: TLSContexts
) -> None:
    link = await make_link("tls", sockets, tls)
    assert isinstance(link.client_proxy, TLSStream)
    startup = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    query = b"Q\x00\x00\x00\x0dSELECT 1;\x00"
    # One TLS write: both arrive in one record.
    await link.client.send_all(startup + query)
    with trio.fail_after(STEP):
        assert await link.client_proxy.recv_exactly(len(startup)) == startup
    # The query now sits decrypted inside OpenSSL; the socket itself is quiet.
    assert link.client_proxy.ssl_object.pending() == len(query)
    assert not readable(link.client_proxy.sock)

    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        with trio.fail_after(STEP):
            assert await read_exactly(link.backend, len(query)) == query
        # And the relay carries on normally afterwards.
        await link.backend.send_all(b"Z\x00\x00\x00\x05I")
        with trio.fail_after(STEP):
            assert await read_exactly(link.client, 6) == b"Z\x00\x00\x00\x05I"
        await link.client.aclose()
        result = await task.wait()
    assert result.ended_by == "client"
    assert (result.bytes_in, result.bytes_out) == (len(query), 6)


# ------------------------------------------------------------------ 6. periodic counters


@pytest.mark.trio
async def test_counters_are_reported_while_the_relay_runs(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_mod, "COUNTER_INTERVAL", 0.02)
    link = await make_link("unix", sockets)
    up, down = payload(200_000, 6), payload(300_000, 7)
    async with trio.open_nursery() as nursery:
        task = start_relay(nursery, link)
        nursery.start_soon(link.client.send_all, up)
        with trio.fail_after(STEP):
            assert await read_exactly(link.backend, len(up)) == up
            await task.c2b.reached(len(up))
        assert not task.done.is_set()

        nursery.start_soon(link.backend.send_all, down)
        with trio.fail_after(STEP):
            assert await read_exactly(link.client, len(down)) == down
            await task.b2c.reached(len(down))
        assert not task.done.is_set()

        await link.backend.aclose()
        result = await task.wait()
    # Reported along the way and at the end, never twice.
    assert (task.c2b.total, task.b2c.total) == (len(up), len(down))
    assert (result.bytes_in, result.bytes_out) == (len(up), len(down))
    assert all(a > 0 for a in task.c2b.amounts + task.b2c.amounts)


# ------------------------------------------------------------------ 7. many at once


@pytest.mark.trio
async def test_many_relays_in_one_engine(sockets: list[socket.socket]) -> None:
    count = 50
    links = [await make_link("unix", sockets) for _ in range(count)]
    # Small proxy-side send buffers: every relay keeps bytes aside now and then,
    # while the engine's shared read buffer serves the others.
    for link in links:
        for stream in (link.client_proxy, link.backend_proxy):
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    exchanged = 0
    all_exchanged = trio.Event()
    close_now = trio.Event()
    results: dict[int, tuple[RelayResult, FakeCounter, FakeCounter]] = {}

    async def session(i: int, link: Link) -> None:
        nonlocal exchanged
        up, down = payload(64_000 + i, 100 + i), payload(96_000 + i, 200 + i)
        async with trio.open_nursery() as nursery:
            task = start_relay(nursery, link)
            nursery.start_soon(link.client.send_all, up)
            nursery.start_soon(link.backend.send_all, down)
            assert await read_exactly(link.backend, len(up)) == up
            assert await read_exactly(link.client, len(down)) == down
            exchanged += 1
            if exchanged == count:
                all_exchanged.set()
            await close_now.wait()
            await (link.client if i % 2 else link.backend).aclose()
            result = await task.wait()
        assert (result.bytes_in, result.bytes_out) == (len(up), len(down))
        results[i] = (result, task.c2b, task.b2c)

    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            for i, link in enumerate(links):
                nursery.start_soon(session, i, link)
            await all_exchanged.wait()
            assert engine().active == count
            close_now.set()
    assert engine().active == 0
    assert sorted(results) == list(range(count))
    for i, (result, c2b, b2c) in results.items():
        assert result.ended_by == ("client" if i % 2 else "backend")
        assert result.error == ""
        assert (c2b.total, b2c.total) == (result.bytes_in, result.bytes_out)
