"""Real Redis servers for the tests: started on free loopback ports, ready when they say so.

``RedisServer`` is one redis-server (optionally with a durable append-only file, for the
kill-and-restart test); ``RedisCluster`` is three primaries joined into a cluster, ready when
each says so; and
``ReplyLoser`` is a TCP proxy in front of a server that can hold or lose its replies, after
the server has acted on the request, as a network that fails at the wrong moment would.
"""

from __future__ import annotations

import contextlib
import selectors
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

READY = "Ready to accept connections"
#: How long a server may take to start, or a cluster to agree; a failure, not a wait.
START_TIMEOUT = 30.0


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server on 127.0.0.1; no persistence unless ``durable`` (AOF, fsync always)."""

    def __init__(self, directory: Path, *, durable: bool = False, extra: tuple[str, ...] = ()):
        self.directory = directory
        self.durable = durable
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._logged = threading.Condition()  # a line came, or the log ended
        self._log_ended = False
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        return [
            "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            *persistence, "--dir", str(self.directory), "--daemonize", "no",
            "--protected-mode", "no", "--loglevel", "notice", *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start it and return once it logged that it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log_ended = False
        path = redis_server_path()
        assert path is not None
        self.process = subprocess.Popen(
            [path, *self.arguments()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._wait_for_ready(self.process)
        return self

    def _wait_for_ready(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        timer = threading.Timer(START_TIMEOUT, process.kill)  # a hung start fails, not hangs
        timer.start()
        try:
            for line in process.stdout:
                self._log.append(line)
                if READY in line:
                    break
            else:
                process.kill()
                process.wait()
                self._close_pipe()
                raise RuntimeError(f"redis-server did not start: {''.join(self._log)}")
        finally:
            timer.cancel()
        # Keep reading its log, so that a full pipe never blocks the server.
        self._drainer = threading.Thread(target=self._drain, args=(process,), daemon=True)
        self._drainer.start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        try:
            with contextlib.suppress(ValueError, OSError):  # closed after a 10 s wait for the end
                for line in process.stdout:
                    with self._logged:
                        self._log.append(line)
                        self._logged.notify_all()
        finally:
            with self._logged:
                self._log_ended = True
                self._logged.notify_all()

    def wait_for_log(self, text: str) -> None:
        """Block until the server logs a line holding ``text``: its readiness for something."""

        def logged() -> bool:
            return self._log_ended or any(text in line for line in self._log)

        with self._logged:
            self._logged.wait_for(logged, START_TIMEOUT)
            if not any(text in line for line in self._log):
                raise RuntimeError(f"redis-server did not log {text!r}: {''.join(self._log)}")

    def command(self, *words: str) -> object:
        """One command, sent as a client would, and its reply."""
        import redis  # only the Redis tests start servers, and only they need redis-py

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            return client.execute_command(*words)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save; what it acknowledged is in its AOF (durable)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._close_pipe()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        """Once the reader has seen the end of the exited server's log: closing the pipe
        under it would make it fail, in whatever test runs then."""
        if self._drainer is not None:
            self._drainer.join(10)
        if self.process is not None and self.process.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                self.process.stdout.close()

    def restart(self) -> None:
        """Start again on the same port and directory, after ``kill`` or ``stop``."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: it accepts connections (the kernel does) and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


#: What a cluster node logs once it serves: every slot has a primary it can reach.
CLUSTER_OK = "Cluster state changed: ok"
SLOTS = 16384


class RedisCluster:
    """Three primaries with ``--cluster-enabled yes``, each given a third of the slots.

    ``launch`` starts them and makes them meet; ``wait_until_ok`` waits for each to say the
    cluster is ok, which no node says sooner than 2 s after it started (redis'
    CLUSTER_WRITABLE_DELAY), so a session launches it early and waits for it when needed.
    """

    def __init__(self, directory: Path) -> None:
        # The bus port is set apart: its default, the port + 10000, may be past 65535.
        self.bus_ports = [free_port() for _ in range(3)]
        self.nodes = [
            RedisServer(directory / f"node{index}", extra=_cluster_options(bus_port))
            for index, bus_port in enumerate(self.bus_ports)
        ]

    @property
    def first(self) -> RedisServer:
        return self.nodes[0]

    def start(self) -> RedisCluster:
        """``launch``, then ``wait_until_ok``."""
        self.launch().wait_until_ok()
        return self

    def launch(self) -> RedisCluster:
        """Start the nodes, give each its slots and its own config epoch, and introduce them
        (what ``redis-cli --cluster create`` does, without its one-second waits)."""
        try:
            share = -(-SLOTS // len(self.nodes))
            for index, node in enumerate(self.nodes):
                node.start()
                node.command("CLUSTER", "SET-CONFIG-EPOCH", str(index + 1))
                last = min((index + 1) * share, SLOTS) - 1
                node.command("CLUSTER", "ADDSLOTSRANGE", str(index * share), str(last))
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                self.first.command("CLUSTER", "MEET", "127.0.0.1", str(node.port), str(bus_port))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ok(self) -> None:
        """Block until every node has said that the cluster is ok."""
        try:
            for node in self.nodes:
                node.wait_for_log(CLUSTER_OK)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_options(bus_port: int) -> tuple[str, ...]:
    return (
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-port", str(bus_port),
    )  # fmt: skip


class ReplyLoser:
    """A TCP proxy to ``port`` that forwards everything, except that it can hold the
    server's replies (``hold``), or drop the next reply and cut that connection
    (``lose_next_reply``, or every ``lose_every``-th reply): the server has then acted on
    the request, and the client never learns it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._to_client: set[socket.socket] = set()  # server-side sockets
        self._mutex = threading.Lock()
        self._lose_next = False
        self._lose_at = 0
        self.lose_every = 0
        self.replies = 0
        self.lost = 0
        #: Set when a request has reached the server while replies are held.
        self.request_seen = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next_reply(self) -> None:
        with self._mutex:
            self._lose_next = True

    def lose_reply_after(self, replies: int) -> None:
        """Pass on ``replies`` replies, then lose the one after them."""
        with self._mutex:
            self._lose_at = self.replies + replies + 1

    def hold(self) -> None:
        """Keep the replies from now on until ``release``; ``request_seen`` tells when a
        request went through to the server meanwhile."""
        self.request_seen.clear()
        self._released.clear()

    def release(self) -> None:
        self._released.set()
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stopping = True
        self._released.set()
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in list(self._peers):
            sock.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    def _serve(self) -> None:
        held: list[tuple[socket.socket, bytes, bool]] = []  # (client, reply, to lose)
        while not self._stopping:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    sock.recv(64)
                else:
                    self._forward(sock, held)
            if self._released.is_set() and held:
                for client, data, lose in held:
                    if lose:
                        self._lose(client)
                        continue
                    with contextlib.suppress(OSError):
                        client.sendall(data)
                held.clear()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        self._peers[client], self._peers[server] = server, client
        self._to_client.add(server)
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(server, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket, held: list[tuple[socket.socket, bytes, bool]]) -> None:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            data = b""
        peer = self._peers.get(sock)
        if not data or peer is None:
            self._cut(sock)
            return
        if sock not in self._to_client:  # a request: on to the server
            peer.sendall(data)
            if not self._released.is_set():
                self.request_seen.set()
            return
        with self._mutex:
            self.replies += 1
            lose = (
                self._lose_next
                or self.replies == self._lose_at
                or bool(self.lose_every and self.replies % self.lose_every == 0)
            )
            self._lose_next = False
        if not self._released.is_set():  # a reply to lose is lost on release, not before
            held.append((peer, data, lose))
        elif lose:
            self._lose(peer)
        else:
            peer.sendall(data)

    def _lose(self, client: socket.socket) -> None:
        """The reply goes nowhere, and the client's connection ends."""
        self.lost += 1
        self._cut(client)

    def _cut(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for each in (sock, peer):
            if each is None:
                continue
            self._peers.pop(each, None)
            self._to_client.discard(each)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(each)
            each.close()


def stop_all(*servers: RedisServer | RedisCluster | None) -> None:
    for server in servers:
        if server is not None:
            server.stop()


__all__ = ("READY", "RedisCluster", "RedisServer", "ReplyLoser", "free_port", "redis_server_path")
