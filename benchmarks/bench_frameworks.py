"""Long polls of the Flask extension and the Django app under ``LongpollWorker`` (issue 18).

Three deployments, measured side by side in one run, each started fresh on a free port of
127.0.0.1 (alternately when ``--rounds`` is more than one):

- **standalone**: ``python -m wsgi_longpoll serve`` (in memory);
- **flask**: ``benchmarks/apps/flask_site.py``, the extension ``LongPoll`` with Flask-Login
  and a per-user authorization callback (``user-<id>``, as in the README), served by
  ``gunicorn -w 1 -k wsgi_longpoll.server.gunicorn.LongpollWorker``;
- **django**: ``benchmarks/apps/django_site.py``, the app ``wsgi_longpoll.contrib.django``
  behind ``startproject``'s middleware, with ``CAN_READ_CATEGORY``/``CAN_PUBLISH`` hooks
  on ``request.user``, under the same worker.

For each, two measurements:

- **fan-out**: log in as a fresh user (the framework deployments answer a session
  cookie), park N subscribers on that user's category ``user-<id>`` with the cookie, publish
  once (authorized as that user), and time until every subscriber has read its answer
  (``loadgen.fanout``: paced on the accept queue, waits until the server is idle before
  publishing). *Server CPU per answer* is the user + system time of the process that serves
  (the ``serve`` process, or gunicorn's worker) from ``/proc/PID/stat``, from the publish to
  the last answer, divided by the answers; *RSS per parked poll* is (``VmRSS`` with N
  parked - ``VmRSS`` idle) / N. A warm-up fan-out to 100 comes first. ``--lpload`` also runs
  the Go load generator's ``fanout`` (anonymous, on the ``fanout-*`` categories the apps leave
  open) for comparison with figures measured with it.
- **SIGTERM**: park M polls (``timeout=110``) the same way, send SIGTERM to the ``serve``
  process or gunicorn's master, and time until every poll has an answer, counting whole 200
  answers, other statuses, empty replies (closed without a byte), resets and answers cut
  short; and until the worker and the signalled process have exited.

Figures are printed as Markdown and written to ``frameworks.json``; nothing passes or fails.

    python benchmarks/bench_frameworks.py                 # N = 10,000, M = 1,000
    python benchmarks/bench_frameworks.py --quick         # N = 1,000, M = 200
    python benchmarks/bench_frameworks.py --rounds 2 --lpload /path/to/lpload
    make bench-frameworks BENCH_ARGS=--quick
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from loadgen import Target  # noqa: E402
from run import _commit, _free_port, progress  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"

WORKER = "wsgi_longpoll.server.gunicorn.LongpollWorker"
#: The ``timeout`` of the polls parked for SIGTERM: longer than any grace period measured,
#: so that no poll is answered by its own timeout (110 is the standalone server's limit).
SIGTERM_POLL_TIMEOUT = 110


@dataclass(frozen=True)
class Deployment:
    """One way of serving long polls."""

    name: str
    #: gunicorn's ``MODULE:VARIABLE`` in ``benchmarks/apps``; ``None``: ``wsgi-longpoll serve``.
    app: str | None
    #: The protocol's paths (a path prefix for ``lpload``).
    prefix: str = ""

    @property
    def subscribe_path(self) -> str:
        return self.prefix + "/events"

    @property
    def publish_path(self) -> str:
        return self.prefix + "/publish"


DEPLOYMENTS = {
    "standalone": Deployment("standalone", None),
    "flask": Deployment("flask", "flask_site:app"),
    "django": Deployment("django", "django_site:application", "/longpoll"),
}


@dataclass
class Running:
    """A started deployment: where it listens and which processes to watch."""

    deployment: Deployment
    port: int
    process: subprocess.Popen[bytes]
    #: The process that serves (``serve`` itself, or gunicorn's worker): its CPU and memory.
    server_pid: int
    log_path: Path

    def target(self, headers: tuple[tuple[str, str], ...] = (),
               publish_headers: tuple[tuple[str, str], ...] = ()) -> Target:
        return Target("127.0.0.1", self.port, self.deployment.subscribe_path,
                      self.deployment.publish_path, self.server_pid, headers, publish_headers)


# -- starting and stopping ---------------------------------------------------------------


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _alive(pid: int) -> bool:
    """Whether process *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _gunicorn_has_control_socket() -> bool:
    """gunicorn 27 opens a control socket in ``~/.gunicorn`` unless told not to."""
    help_text = subprocess.run([sys.executable, "-m", "gunicorn", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    return "--no-control-socket" in help_text


def _command(deployment: Deployment, port: int, args: argparse.Namespace) -> list[str]:
    if deployment.app is None:
        return [sys.executable, "-m", "wsgi_longpoll", "serve", "--address",
                f"127.0.0.1:{port}", "--no-access-log", "--no-demo", "--log-level", "WARNING",
                "--shutdown-timeout", f"{args.serve_shutdown_timeout:g}"]
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", WORKER,
               "-b", f"127.0.0.1:{port}", "--pythonpath", str(APPS),
               "--worker-connections", str(args.worker_connections),
               "--graceful-timeout", f"{args.graceful_timeout:g}",
               "--log-level", "info"]
    if args.no_control_socket:
        command.append("--no-control-socket")
    return command + [deployment.app]


def _ready(port: int) -> bool:
    """Whether something answers HTTP on *port* (any status will do)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/ready")
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def started(deployment: Deployment, args: argparse.Namespace, log_dir: Path
            ) -> Iterator[Running]:
    """Start *deployment* on a free port; make sure every process is gone afterwards."""
    port = _free_port()
    log_path = log_dir / f"{deployment.name}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_command(deployment, port, args), cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    worker: int | None = None
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{deployment.name} exited with {process.returncode} before it answered; "
                    f"the end of {log_path}:\n{_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{deployment.name} did not answer HTTP in 60 s; the end "
                                   f"of {log_path}:\n{_log_tail(log_path)}")
            time.sleep(0.1)
        if deployment.app is None:
            server_pid = process.pid
        else:
            workers = _children(process.pid)
            if len(workers) != 1:
                raise RuntimeError(f"expected one gunicorn worker, found {workers}; the end "
                                   f"of {log_path}:\n{_log_tail(log_path)}")
            worker = server_pid = workers[0]
        yield Running(deployment, port, process, server_pid, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(args.graceful_timeout + 15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if worker is not None and _alive(worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def _log_in(running: Running, user: int) -> Target:
    """A target whose requests carry *user*'s session (and CSRF token, for Django)."""
    if running.deployment.app is None:
        return running.target()  # the standalone server has no users
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        connection.request("POST", f"/login/{user}")
        response = connection.getresponse()
        body = response.read()
        cookies = [value.split(";", 1)[0] for value in response.headers.get_all("Set-Cookie")
                   or ()]
    finally:
        connection.close()
    if response.status != 200 or not cookies:
        raise RuntimeError(f"logging in to {running.deployment.name} answered "
                           f"{response.status} {body[:200]!r} (cookies: {cookies})")
    csrf = json.loads(body).get("csrf")
    return running.target((("Cookie", "; ".join(cookies)),),
                          (("X-CSRFToken", csrf),) if csrf else ())


# -- fan-out ------------------------------------------------------------------------------


def measure_fanout(running: Running, count: int, label: str) -> dict[str, Any]:
    report = progress(f"{label} fan-out {count:,}")
    warm_user = int.from_bytes(os.urandom(4), "big")
    loadgen.fanout(_log_in(running, warm_user), 100, category=f"user-{warm_user}")
    user = int.from_bytes(os.urandom(4), "big")
    target = _log_in(running, user)
    result = loadgen.fanout(target, count, report, category=f"user-{user}")
    per_poll = None
    if result.rss_parked_kb is not None and result.rss_idle_kb is not None:
        per_poll = (result.rss_parked_kb - result.rss_idle_kb) / count
    report(f"{result.milliseconds:,.0f} ms to the last answer, "
           f"{result.server_cpu_us_per_answer or 0:.1f} us server CPU per answer, "
           f"{per_poll or 0:.1f} KB per parked poll, {result.bad_answers} bad answers")
    return dataclasses.asdict(result) | {"kb_per_parked_poll": per_poll}


def measure_lpload(running: Running, lpload: Path, count: int, label: str
                   ) -> dict[str, Any]:
    """``lpload fanout`` (anonymous subscribers on an open ``fanout-*`` category)."""
    report = progress(f"{label} lpload fanout {count:,}")
    report("running")
    url = f"http://127.0.0.1:{running.port}{running.deployment.prefix}"
    completed = subprocess.run(
        [str(lpload), "fanout", "-url", url, "-n", str(count), "-pid", str(running.server_pid)],
        capture_output=True, text=True, timeout=180)
    figures = {name: float(value) for name, value in
               re.findall(r"^fanout_\d+_(\w+) ([0-9.]+)$", completed.stdout, re.MULTILINE)}
    if completed.returncode or "answered" not in figures:
        raise RuntimeError(f"lpload failed ({completed.returncode}): {completed.stderr[-500:]}")
    report(f"{figures.get('ms', 0):,.0f} ms, {figures.get('cpu_us', 0):.1f} us server CPU "
           f"per answer, {figures['answered']:,.0f} answered")
    return figures


# -- SIGTERM ------------------------------------------------------------------------------


@dataclass
class ShutdownResult:
    """What *M* parked polls got after SIGTERM, and when."""

    polls: int
    answered_200: int = 0
    other_status: int = 0
    empty_reply: int = 0
    reset: int = 0
    cut_short: int = 0
    unanswered: int = 0
    #: Milliseconds from the signal to the last answer of any kind (None: some had none).
    last_answer_ms: float | None = None
    #: Milliseconds from the signal until the worker (gunicorn's; ``serve`` itself) exited.
    worker_exit_ms: float | None = None
    #: Milliseconds from the signal until the signalled process exited.
    exit_ms: float | None = None
    exit_status: int | None = None
    sample_other: str | None = None


def measure_sigterm(running: Running, count: int, limit: float, label: str
                    ) -> ShutdownResult:
    """Park *count* polls, send SIGTERM, and watch the answers and the processes."""
    report = progress(f"{label} SIGTERM with {count:,} parked")
    user = int.from_bytes(os.urandom(4), "big")
    target = _log_in(running, user)
    request = target.subscribe_request(f"user-{user}", SIGTERM_POLL_TIMEOUT, close=True)
    sockets = loadgen._park(target, request, count, report)
    result = ShutdownResult(count)
    poller = select.epoll(count + 1)
    try:
        loadgen._wait_parked(target, count, report)
        buffers: dict[int, tuple[socket.socket, bytearray]] = {}
        for sock in sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
            buffers[sock.fileno()] = (sock, bytearray())
        report("sending SIGTERM")
        started_at = time.perf_counter()
        running.process.send_signal(signal.SIGTERM)
        deadline = started_at + limit
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if result.worker_exit_ms is None and not _alive(running.server_pid):
                result.worker_exit_ms = (now - started_at) * 1000
            if result.exit_ms is None and running.process.poll() is not None:
                result.exit_ms = (now - started_at) * 1000
                result.exit_status = running.process.returncode
            if not buffers and result.exit_ms is not None and result.worker_exit_ms is not None:
                break
            for fd, _ in poller.poll(0.02):
                sock, buffer = buffers[fd]
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk, outcome = b"", "reset"
                else:
                    buffer += chunk
                    response = loadgen.take_response(buffer, at_eof=not chunk)
                    if response is None and chunk:
                        continue  # more to come
                    if response is None:
                        outcome = "cut_short" if buffer else "empty_reply"
                    elif response[0] == 200:
                        outcome = "answered_200"
                    else:
                        outcome = "other_status"
                        result.sample_other = result.sample_other or (
                            f"{response[0]} {response[1][:200]!r}")
                setattr(result, outcome, getattr(result, outcome) + 1)
                result.last_answer_ms = (time.perf_counter() - started_at) * 1000
                poller.unregister(fd)
                del buffers[fd]
        result.unanswered = len(buffers)
        if result.unanswered:
            result.last_answer_ms = None
        if running.process.poll() is None:
            report(f"still running {limit:g} s after SIGTERM: killed")
            running.process.kill()
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
    report(f"{result.answered_200:,} answered 200, {result.other_status} other, "
           f"{result.empty_reply:,} empty, {result.reset:,} reset, {result.cut_short} cut, "
           f"{result.unanswered:,} unanswered; last answer "
           f"{_ms(result.last_answer_ms)}, worker exit {_ms(result.worker_exit_ms)}, "
           f"exit {_ms(result.exit_ms)}")
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


# -- output -------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def tables(rounds: list[dict[str, dict[str, Any]]], count: int, polls: int) -> str:
    """The figures of every round in Markdown: fan-out, lpload (if run), SIGTERM."""
    lines = [f"Fan-out to {count:,} parked subscribers:", "",
             "| round | deployment | publish -> last answer | server CPU per answer | "
             "CPU ratio to standalone | RSS idle -> parked | RSS per parked poll | "
             "RSS ratio to standalone | bad answers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for number, runs in enumerate(rounds, 1):
        base = runs.get("standalone", {}).get("fanout", {})
        for name, run in runs.items():
            fan = run["fanout"]
            lines.append(
                f"| {number} | {name} | {fan['milliseconds']:,.0f} ms | "
                f"{fan['server_cpu_us_per_answer']:.1f} us | "
                f"{_ratio(fan['server_cpu_us_per_answer'], base.get('server_cpu_us_per_answer'))}"
                f" | {fan['rss_idle_kb'] / 1024:,.1f} -> {fan['rss_parked_kb'] / 1024:,.1f} MB | "
                f"{fan['kb_per_parked_poll']:.1f} KB | "
                f"{_ratio(fan['kb_per_parked_poll'], base.get('kb_per_parked_poll'))} | "
                f"{fan['bad_answers']} |")
    if len(rounds) > 1:
        lines += ["", "Medians over the rounds:", "",
                  "| deployment | server CPU per answer | CPU ratio | RSS per parked poll | "
                  "RSS ratio |", "|---|---|---|---|---|"]
        names = list(rounds[0])
        medians = {name: {key: statistics.median(r[name]["fanout"][key] for r in rounds)
                          for key in ("server_cpu_us_per_answer", "kb_per_parked_poll")}
                   for name in names}
        base = medians.get("standalone", {})
        for name, median in medians.items():
            cpu, kb = median["server_cpu_us_per_answer"], median["kb_per_parked_poll"]
            lines.append(f"| {name} | {cpu:.1f} us | "
                         f"{_ratio(cpu, base.get('server_cpu_us_per_answer'))} | "
                         f"{kb:.1f} KB | {_ratio(kb, base.get('kb_per_parked_poll'))} |")
    if any("lpload" in run for runs in rounds for run in runs.values()):
        lines += ["", f"lpload fanout -n {count} (anonymous, open category), for comparison:",
                  "", "| round | deployment | publish -> last answer | server CPU per answer "
                  "| CPU ratio to standalone | answered |", "|---|---|---|---|---|---|"]
        for number, runs in enumerate(rounds, 1):
            base = runs.get("standalone", {}).get("lpload", {})
            for name, run in runs.items():
                figures = run.get("lpload")
                if figures:
                    lines.append(
                        f"| {number} | {name} | {figures.get('ms', 0):,.0f} ms | "
                        f"{figures.get('cpu_us', 0):.1f} us | "
                        f"{_ratio(figures.get('cpu_us'), base.get('cpu_us'))} | "
                        f"{figures['answered']:,.0f} |")
    if not all("sigterm" in run for runs in rounds for run in runs.values()):
        return "\n".join(lines)
    lines += ["", f"SIGTERM with {polls:,} parked polls (timeout={SIGTERM_POLL_TIMEOUT}):", "",
              "| round | deployment | 200 answers | empty replies | resets | cut short | "
              "other status | unanswered | last answer after | worker exited after | "
              "process exited after (status) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for number, runs in enumerate(rounds, 1):
        for name, run in runs.items():
            down = run["sigterm"]
            lines.append(
                f"| {number} | {name} | {down['answered_200']:,} | {down['empty_reply']:,} | "
                f"{down['reset']:,} | {down['cut_short']:,} | {down['other_status']:,} | "
                f"{down['unanswered']:,} | {_ms(down['last_answer_ms'])} | "
                f"{_ms(down['worker_exit_ms'])} | {_ms(down['exit_ms'])} "
                f"({down['exit_status']}) |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fan-out and SIGTERM: the standalone server, and the Flask extension and "
        "the Django app under gunicorn with LongpollWorker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=10_000,
                        help="parked subscribers of the fan-out (N)")
    parser.add_argument("--sigterm-polls", type=int, default=1_000,
                        help="parked polls when SIGTERM is sent (M)")
    parser.add_argument("--quick", action="store_true",
                        help="N = 1,000 and M = 200")
    parser.add_argument("--deployments", nargs="+", choices=list(DEPLOYMENTS),
                        default=list(DEPLOYMENTS), help="which to measure, in this order")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every deployment this many times, alternately")
    parser.add_argument("--worker-connections", type=int, default=None,
                        help="gunicorn's worker_connections (default: N + 1,000)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="gunicorn's graceful_timeout (its default: 30 s)")
    parser.add_argument("--serve-shutdown-timeout", type=float, default=10.0,
                        help="wsgi-longpoll serve --shutdown-timeout (its default: 10 s)")
    parser.add_argument("--lpload", type=Path, default=None,
                        help="also run this lpload binary's fanout on each deployment")
    parser.add_argument("--skip-sigterm", action="store_true", help="only the fan-out")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="directory for frameworks.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.subscribers, args.sigterm_polls = 1_000, 200
    if args.worker_connections is None:
        args.worker_connections = max(args.subscribers, args.sigterm_polls) + 1_000
    if max(args.graceful_timeout, args.serve_shutdown_timeout) + 15 >= SIGTERM_POLL_TIMEOUT:
        print(f"bench_frameworks.py: the grace periods must end well before the polls' "
              f"timeout ({SIGTERM_POLL_TIMEOUT} s)", file=sys.stderr)
        return 2
    limit = loadgen.raise_open_files_limit()
    needed = max(args.subscribers, args.sigterm_polls, args.worker_connections) + 100
    if needed > limit:
        print(f"bench_frameworks.py: {needed:,} open files needed, {limit:,} allowed "
              f"(ulimit -n)", file=sys.stderr)
        return 2
    if args.lpload is not None and not os.access(args.lpload, os.X_OK):
        print(f"bench_frameworks.py: {args.lpload} is not an executable", file=sys.stderr)
        return 2
    args.no_control_socket = _gunicorn_has_control_socket()
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-frameworks-"))
    commit = _commit()
    load_before = os.getloadavg()
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(1, args.rounds + 1):
        runs: dict[str, dict[str, Any]] = {}
        for name in args.deployments:
            label = f"round {number} {name}"
            with started(DEPLOYMENTS[name], args, log_dir) as running:
                run: dict[str, Any] = {"pid": running.server_pid}
                run["fanout"] = measure_fanout(running, args.subscribers, label)
                if args.lpload is not None:
                    run["lpload"] = measure_lpload(running, args.lpload, args.subscribers,
                                                   label)
                if not args.skip_sigterm:
                    grace = (args.serve_shutdown_timeout if running.deployment.app is None
                             else args.graceful_timeout)
                    run["sigterm"] = dataclasses.asdict(
                        measure_sigterm(running, args.sigterm_polls, grace + 15, label))
            runs[name] = run
        rounds.append(runs)
    load_after = os.getloadavg()
    rendered = tables(rounds, args.subscribers, args.sigterm_polls)
    print(rendered)
    document = {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_before": load_before,
                    "load_after": load_after},
        "options": {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in vars(args).items()},
        "rounds": rounds,
        "table": rendered,
    }
    (args.out / "frameworks.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"figures: {args.out / 'frameworks.json'}; server logs: {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
