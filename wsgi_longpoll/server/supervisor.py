"""Several worker processes on one port: ``wsgi-longpoll serve --workers N``.

One server process uses one core. :class:`Supervisor` forks *N* workers, each running a
server with a gevent hub of its own on the same port: on Linux each worker listens on a
socket of its own bound with ``SO_REUSEPORT`` (the supervisor holds the port), and the
kernel spreads new connections evenly across them; elsewhere they inherit one listening
socket from the supervisor and accept from it in turn (:data:`REUSE_PORT`). The workers
share nothing but the port: their events must be in Redis (``--redis-url``), or a
subscriber would only see what was published to its own worker (see
:mod:`wsgi_longpoll.multiprocess`).

The supervisor does no request work. It:

- starts the workers and waits until each says it is serving (a byte on a pipe); a worker
  that exits before that, or is not serving within :attr:`Supervisor.boot_timeout`, is a
  failure to boot: the others are stopped and the supervisor exits 1 (a worker that cannot
  start, say because Redis is unreachable, would fail again at once);
- restarts a worker that dies after it booted (a crash, the kernel's OOM killer), logging
  how it ended; the connections it held are cut, the socket stays open for the others;
- on SIGTERM or SIGINT, sends SIGTERM to every worker, which drains (stops accepting,
  answers every waiting subscriber, lets requests in progress finish within the shutdown
  timeout), waits for them, and exits with the worst status among them (a worker killed
  by a signal counts as 128 plus the signal's number).

Workers ignore SIGINT (Ctrl-C in a terminal signals the whole process group; the
supervisor passes the stop on as SIGTERM) and a second signal while they drain. A worker
whose supervisor is gone (killed with SIGKILL) notices within a second, drains and exits.
POSIX only (it forks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["REUSE_PORT", "Supervisor", "Worker", "bind", "exit_status"]

logger = logging.getLogger(__name__)

#: What a worker runs, in the forked process: it calls the function it is given once it
#: serves, runs until SIGTERM, and returns its exit status.
WorkerTarget = Callable[[Callable[[], None]], int]


#: Whether each worker listens on a socket of its own, bound with ``SO_REUSEPORT``: on
#: Linux, where the kernel then spreads new connections evenly across the workers' sockets
#: (by a hash of each connection's addresses). Elsewhere the workers share one socket,
#: and the worker that wakes first accepts: a burst of connections may go to one.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, backlog: int | None = 4096,
         reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to *host*:*port* (``""``: every interface), listening unless
    *backlog* is ``None``.

    :param reuse_port: set ``SO_REUSEPORT``, so that the workers' sockets share the port.
        A bound socket that does not listen then holds the port (port 0: picks it) for
        the workers, and gets none of their connections.
    :raises OSError: if the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def exit_status(wait_status: int) -> int:
    """A process's exit status from :func:`os.waitpid`'s: its exit code, or 128 plus the
    number of the signal that killed it (as a shell reports it)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _describe(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(wait_status)}"


class Worker:
    """One worker process as the supervisor sees it.

    :param number: its slot, 1 to N (a restarted worker keeps its slot).
    """

    __slots__ = ("number", "pid", "ready", "ready_pipe", "started")

    def __init__(self, number: int) -> None:
        self.number = number
        self.pid = 0
        #: Whether it said it serves.
        self.ready = False
        #: The read end of the pipe it says so on, until it has.
        self.ready_pipe = -1
        self.started = 0.0

    def __repr__(self) -> str:
        return f"<Worker {self.number} pid={self.pid}{' ready' if self.ready else ''}>"


class _Stop(Exception):
    pass


def _stopped_before_serving(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class Supervisor:
    """Runs *target* in *workers* forked processes until SIGTERM or SIGINT.

    :param workers: how many processes.
    :param target: what each runs (:data:`WorkerTarget`); the listening socket is the
        caller's to create before :meth:`run`, so that every worker inherits it.
    :param shutdown_timeout: the seconds each worker gets to drain; a worker still alive
        :attr:`kill_grace` seconds after that is killed.
    :param on_ready: called once every worker serves (to print a banner).
    """

    #: Seconds a worker has to start serving before it counts as failed to boot.
    boot_timeout = 60.0
    #: Seconds beyond the shutdown timeout before a worker that has not exited is killed.
    kill_grace = 10.0
    #: Seconds between two checks, in a worker, that its supervisor is alive.
    parent_check_interval = 1.0

    def __init__(self, workers: int, target: WorkerTarget, *, shutdown_timeout: float,
                 on_ready: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = [Worker(number) for number in range(1, workers + 1)]
        self.target = target
        self.shutdown_timeout = shutdown_timeout
        self.on_ready = on_ready
        self.pid = os.getpid()
        self._stop_reason: str | None = None
        self._wake_read = self._wake_write = -1
        #: The worst exit status of a worker so far.
        self.status = 0

    # -- the supervisor -----------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, supervise them until a signal or a failure to boot, stop
        them; the worst exit status among them (1 for a failure to boot)."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous_wakeup = signal.set_wakeup_fd(self._wake_write)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            try:
                for worker in self.workers:
                    self._spawn(worker)
                self._supervise()
            except _Stop:
                pass
            self._stop_all()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:
                self._close_ready_pipe(worker)
            os.close(self._wake_read)
            os.close(self._wake_write)
        return self.status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGCHLD:
            return  # the wakeup fd wakes the loop, which reaps
        if self._stop_reason is None:
            self._stop_reason = signal.Signals(signum).name
        else:
            logger.info("%s received: already stopping", signal.Signals(signum).name)

    def _spawn(self, worker: Worker) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            self._become_worker(write_end)  # never returns
        os.close(write_end)
        worker.pid = pid
        worker.ready = False
        worker.ready_pipe = read_end
        worker.started = time.monotonic()
        logger.info("worker %d started (pid %d)", worker.number, pid)

    def _supervise(self) -> None:
        announced = False
        while True:
            if self._stop_reason is not None:
                logger.info("%s received: stopping %d workers (draining for up to %.1f s)",
                            self._stop_reason, len(self.workers), self.shutdown_timeout)
                return
            booting = [worker for worker in self.workers if not worker.ready]
            timeout = 1.0
            if booting:
                oldest = min(worker.started for worker in booting)
                timeout = max(0.0, min(timeout, oldest + self.boot_timeout - time.monotonic()))
            pipes = [worker.ready_pipe for worker in booting if worker.ready_pipe >= 0]
            try:
                readable, _, _ = select.select([self._wake_read, *pipes], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                readable = []
            if self._wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 512):
                        pass
            for worker in booting:
                if worker.ready_pipe in readable:
                    self._read_ready(worker)
            self._reap()
            now = time.monotonic()
            for worker in self.workers:
                if not worker.ready and now - worker.started > self.boot_timeout:
                    logger.error("worker %d (pid %d) is not serving after %.0f s: stopping",
                                 worker.number, worker.pid, self.boot_timeout)
                    self.status = max(self.status, 1)
                    raise _Stop
            if not announced and all(worker.ready for worker in self.workers):
                announced = True
                if self.on_ready is not None:
                    self.on_ready()

    def _read_ready(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_pipe, 1)
        except OSError:
            data = b""
        if data:
            worker.ready = True
        self._close_ready_pipe(worker)  # on EOF too: the exit is reaped below

    @staticmethod
    def _close_ready_pipe(worker: Worker) -> None:
        if worker.ready_pipe >= 0:
            os.close(worker.ready_pipe)
            worker.ready_pipe = -1

    def _reap(self) -> None:
        """Collect the workers that exited: restart those that had booted; a failure to
        boot stops the supervisor."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((worker for worker in self.workers if worker.pid == pid), None)
            if worker is None:
                continue
            worker.pid = 0
            self._close_ready_pipe(worker)
            if not worker.ready:
                logger.error("worker %d (pid %d) failed to boot (%s): stopping",
                             worker.number, pid, _describe(wait_status))
                self.status = max(self.status, 1, exit_status(wait_status))
                raise _Stop
            logger.error("worker %d (pid %d) died (%s): starting another", worker.number,
                         pid, _describe(wait_status))
            self._spawn(worker)

    def _stop_all(self) -> None:
        """SIGTERM every live worker, wait for them all (killing the late), and keep the
        worst exit status."""
        for worker in self.workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + self.kill_grace
        killed = False
        while any(worker.pid for worker in self.workers):
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > deadline and not killed:
                    for worker in self.workers:
                        if worker.pid:
                            logger.error("worker %d (pid %d) did not stop in time: killing it",
                                         worker.number, worker.pid)
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(worker.pid, signal.SIGKILL)
                    killed = True
                with contextlib.suppress(InterruptedError):
                    select.select([self._wake_read], [], [], 0.1)
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 512):
                        pass
                continue
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid = 0
                    status = exit_status(wait_status)
                    self.status = max(self.status, status)
                    log = logger.info if status == 0 else logger.error
                    log("worker %d (pid %d) stopped (%s)", worker.number, pid,
                        _describe(wait_status))

    # -- a worker -----------------------------------------------------------------------

    def _become_worker(self, ready_pipe: int) -> None:
        """Run :attr:`target` in the forked process, then exit it; never returns."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Stopped while it starts (another worker failed to boot): exit 0, as a worker
            # stopped once serving does; the target sets a handler of its own to drain.
            signal.signal(signal.SIGTERM, _stopped_before_serving)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.close(self._wake_read)
            os.close(self._wake_write)
            for other in self.workers:
                self._close_ready_pipe(other)

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_pipe, b"r")
                    os.close(ready_pipe)

            status = self.target(ready)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            logger.exception("the worker failed")
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def parent_alive(self) -> bool:
        """In a worker: whether the supervisor that forked it still runs."""
        return os.getppid() == self.pid

