"""Server CPU per publish and per immediate subscribe (issue 21), side by side.

Two ways to measure the same thing:

- **wrk** (the default): ``wrk -t1 -c50 -d5s`` drives publishes (``post.lua``) and
  immediate subscribes (one event published to ``bench-sub`` first, then
  ``/events?category=bench-sub&timeout=1&since_time=0``); the server's CPU is its user +
  system time from ``/proc/PID/stat`` over the run, divided by the requests wrk counted
  (BENCHMARKS.md). Our server and a second one (``--golongpoll PATH`` starts golongpoll's
  reference build, ``--compare-url``/``--compare-pid`` names one already running) are
  measured alternately, ``--rounds`` times, in one sitting, and the ratio of each round is
  printed. A tick is 10 ms: on a loaded machine repeat it.
- **callgrind** (``--callgrind N``): our server runs under ``valgrind --tool=callgrind``;
  its counters are zeroed, exactly N requests are sent over ``--connections`` keep-alive
  connections, and the counters dumped: instructions (``Ir``) per request, in user space
  only (the kernel's socket work is not counted), the same whatever else the machine runs.
  ``--source DIR`` measures the package in another checkout (before/after).

Nothing passes or fails; the figures are printed and written to ``results/cpu.json``.

    python benchmarks/bench_cpu.py --golongpoll /path/to/golongpoll --rounds 3
    python benchmarks/bench_cpu.py --callgrind 20000
    python benchmarks/bench_cpu.py --callgrind 20000 --source /tmp/old-checkout
    make bench-cpu BENCH_ARGS="--golongpoll /path/to/golongpoll"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from loadgen import Target  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: What is measured: name -> how it is named in the table.
CASES = {"publish": "publish", "subscribe": "immediate subscribe"}


def progress(message: str) -> None:
    print(f"bench_cpu: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int, what: str,
                    seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen within {seconds:g} s") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def our_command(port: int) -> list[str]:
    """``wsgi-longpoll serve`` as measured: in memory, access log and demo off."""
    return [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", f"127.0.0.1:{port}",
            "--no-access-log", "--no-demo", "--log-level", "WARNING"]


def _environment(source: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.contextmanager
def ours(source: Path | None, log: Path) -> Iterator[Target]:
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(our_command(port), cwd=source or ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, env=_environment(source))
    try:
        _wait_listening(process, port, "wsgi-longpoll serve")
        yield Target("127.0.0.1", port, pid=process.pid)
    finally:
        _stop(process)


@contextlib.contextmanager
def golongpoll(binary: Path, log: Path) -> Iterator[Target]:
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([str(binary), "-addr", f"127.0.0.1:{port}"], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        _wait_listening(process, port, str(binary))
        yield Target("127.0.0.1", port, pid=process.pid)
    finally:
        _stop(process, signal.SIGTERM)


# -- wrk ------------------------------------------------------------------------------


def wrk_run(target: Target, case: str, connections: int, duration: float) -> dict[str, Any]:
    """One wrk run of *case* against *target*: requests/s and server CPU per request."""
    if case == "publish":
        url = target.url + target.publish_path
        command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s",
                   str(HERE / "post.lua"), url]
    else:
        url = (f"{target.url}{target.subscribe_path}"
               "?category=bench-sub&timeout=1&since_time=0")
        command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", url]
    assert target.pid is not None
    before = loadgen.server_cpu_seconds(target.pid)
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=duration + 60).stdout
    cpu = loadgen.server_cpu_seconds(target.pid) - before
    requests, seconds, errors = parse_wrk(output)
    return {"requests": requests, "seconds": seconds, "errors": errors,
            "per_second": requests / seconds, "cpu_s": cpu,
            "cpu_us": cpu / requests * 1e6 if requests else None}


def parse_wrk(output: str) -> tuple[int, float, int]:
    """``(requests, seconds, errors)`` from wrk's report."""
    match = re.search(r"([0-9]+) requests in ([0-9.]+)(m?s)", output)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    seconds = float(match[2]) / (1000 if match[3] == "ms" else 1)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", output)
    if non_2xx:
        errors += int(non_2xx[1])
    return int(match[1]), seconds, errors


def measure_wrk(args: argparse.Namespace) -> dict[str, Any]:
    """Every round: ours, then the other server (if any), each case in turn."""
    logs = Path(tempfile.mkdtemp(prefix="bench_cpu-"))
    rounds: list[dict[str, dict[str, Any]]] = []
    with contextlib.ExitStack() as stack:
        servers: dict[str, Target] = {
            args.name: stack.enter_context(ours(args.source, logs / "ours.log"))}
        if args.golongpoll is not None:
            servers["golongpoll"] = stack.enter_context(
                golongpoll(args.golongpoll, logs / "golongpoll.log"))
        elif args.compare_url:
            servers[args.compare_name] = Target.from_url(args.compare_url,
                                                         pid=args.compare_pid)
        for target in servers.values():
            loadgen.publish_once(target, "bench-sub", "hello world")
            wrk_run(target, "publish", args.connections, 1)  # warm up
        for number in range(args.rounds):
            figures: dict[str, dict[str, Any]] = {}
            for name, target in servers.items():
                for case in CASES:
                    result = wrk_run(target, case, args.connections, args.duration)
                    figures.setdefault(name, {})[case] = result
                    progress(f"round {number + 1} {name} {CASES[case]}: "
                             f"{result['per_second']:,.0f}/s, "
                             f"{result['cpu_us']:.1f} us CPU per request"
                             + (f", {result['errors']} errors" if result["errors"] else ""))
            rounds.append(figures)
    return {"mode": "wrk", "servers": list(servers), "rounds": rounds}


def wrk_table(result: dict[str, Any]) -> str:
    """One line per round and case; the ratio to the second server when there is one."""
    names = result["servers"]
    header = ["round", "case", *(f"{name} req/s" for name in names),
              *(f"{name} CPU/request" for name in names)]
    if len(names) > 1:
        header.append(f"CPU ratio {names[0]} / {names[1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios: dict[str, list[float]] = {case: [] for case in CASES}
    for number, figures in enumerate(result["rounds"], 1):
        for case, title in CASES.items():
            runs = [figures[name][case] for name in names]
            cells = [str(number), title, *(f"{run['per_second']:,.0f}" for run in runs),
                     *(f"{run['cpu_us']:.1f} us" for run in runs)]
            if len(names) > 1 and runs[1]["cpu_us"]:
                ratio = runs[0]["cpu_us"] / runs[1]["cpu_us"]
                ratios[case].append(ratio)
                cells.append(f"{ratio:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    if len(names) > 1:
        for case, title in CASES.items():
            if ratios[case]:
                cells = ["median", title, *[""] * (2 * len(names)),
                         f"**{statistics.median(ratios[case]):.2f}x**"]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- callgrind ----------------------------------------------------------------------------


def exact_requests(target: Target, request: bytes, connections: int, count: int,
                   think: float = 0.0) -> int:
    """Send *request* *count* times over *connections* keep-alive connections and read
    every answer; the number of answers other than 200.

    Each connection sends its next request *think* seconds after its answer came in, as
    a client does once it has read the answer: under callgrind the server runs some 50
    times slower than the client, which without the pause would have its next request
    there before the server looked for it, a timing no real run sees.
    """
    poller = select.epoll()
    sockets: dict[int, socket.socket] = {}
    buffers: dict[int, bytearray] = {}
    due: list[tuple[float, int]] = []  # (when, fd) of the next requests, in order
    sent = answered = errors = 0
    try:
        for _ in range(min(connections, count)):
            sock = target.connect()
            sock.setblocking(False)
            sockets[sock.fileno()] = sock
            buffers[sock.fileno()] = bytearray()
            poller.register(sock.fileno(), select.EPOLLIN)
            sock.send(request)
            sent += 1
        while answered < count:
            now = time.monotonic()
            while due and due[0][0] <= now:
                sockets[due.pop(0)[1]].send(request)
                sent += 1
            wait = min(60.0, due[0][0] - now) if due else 60.0
            events = poller.poll(wait)
            if not events:
                if due:
                    continue
                raise RuntimeError(f"no answer in 60 s ({answered} of {count} answered)")
            for fd, _ in events:
                sock = sockets[fd]
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed a keep-alive connection")
                buffer = buffers[fd]
                buffer += chunk
                while (response := loadgen.take_response(buffer)) is not None:
                    answered += 1
                    errors += response[0] != 200
                    if sent + len(due) < count:
                        due.append((time.monotonic() + think, fd))
    finally:
        poller.close()
        for sock in sockets.values():
            sock.close()
    return errors


def callgrind_total(path: Path) -> int:
    """The ``Ir`` total of a callgrind output file."""
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:totals|summary):\s*([0-9]+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {path}")
    return int(match[1])


def measure_callgrind(args: argparse.Namespace) -> dict[str, Any]:
    """Instructions per request of our server under callgrind, for each case."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench_cpu: --callgrind needs valgrind (apt-get install valgrind)")
    out = Path(tempfile.mkdtemp(prefix="bench_cpu-callgrind-"))
    port = _free_port()
    server = ([part.replace("{port}", str(port)) for part in shlex.split(args.command)]
              if args.command else our_command(port))
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p",
               *server]
    progress(f"starting the server under callgrind ({out})")
    with open(out / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=args.source or ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env=_environment(args.source))
    figures: dict[str, Any] = {}
    try:
        _wait_listening(process, port, "the server under valgrind", 300)
        target = Target("127.0.0.1", port, pid=process.pid)
        loadgen.publish_once(target, "bench-sub", "hello world")
        requests = {
            "publish": target.publish_request("bench", "hello world"),
            "subscribe": target.subscribe_request("bench-sub", 1, 0),
        }
        for case, request in requests.items():
            think = args.think_ms / 1000
            exact_requests(target, request, args.connections, min(args.callgrind, 500), think)
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True,
                           capture_output=True, timeout=120)
            errors = exact_requests(target, request, args.connections, args.callgrind, think)
            dump = f"{case}"
            subprocess.run(["callgrind_control", f"--dump={dump}", str(process.pid)],
                           check=True, capture_output=True, timeout=300)
            files = sorted(out.glob(f"callgrind.{process.pid}.*"), key=os.path.getmtime)
            total = callgrind_total(files[-1])
            figures[case] = {"requests": args.callgrind, "errors": errors, "ir": total,
                             "ir_per_request": total / args.callgrind,
                             "profile": str(files[-1])}
            progress(f"{CASES[case]}: {total / args.callgrind:,.0f} instructions per request "
                     f"({errors} errors); profile {files[-1]}")
    finally:
        _stop(process)
    return {"mode": "callgrind", "command": server, "cases": figures}


def callgrind_table(result: dict[str, Any]) -> str:
    lines = ["| case | requests | instructions per request |", "|---|---|---|"]
    for case, figures in result["cases"].items():
        lines.append(f"| {CASES[case]} | {figures['requests']:,} | "
                     f"{figures['ir_per_request']:,.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Server CPU per publish and per immediate subscribe, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--golongpoll", type=Path, default=None,
                        help="a golongpoll reference binary to start and compare with "
                        "(../shared/reference/build-golongpoll.sh builds it)")
    parser.add_argument("--compare-url", help="compare with the server at this URL")
    parser.add_argument("--compare-pid", type=int, help="process id of --compare-url's server")
    parser.add_argument("--compare-name", default="other")
    parser.add_argument("--name", default="wsgi_longpoll")
    parser.add_argument("--source", type=Path, default=None,
                        help="measure the package in this checkout instead of this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk run")
    parser.add_argument("--callgrind", type=int, default=0, metavar="N",
                        help="count instructions per request under callgrind, N requests "
                        "per case (instead of wrk)")
    parser.add_argument("--command", default=None,
                        help="under callgrind, run this server instead of ours ('{port}' "
                        "stands for its port), e.g. \"/path/to/golongpoll -addr "
                        "127.0.0.1:{port}\"")
    parser.add_argument("--think-ms", type=float, default=2.0,
                        help="under callgrind, the pause of each connection between an "
                        "answer and its next request")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="directory for cpu.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare_url and args.compare_pid is None:
        print("bench_cpu: --compare-pid is needed to read the other server's CPU",
              file=sys.stderr)
        return 2
    if args.source is not None:
        args.source = args.source.resolve()
    if args.callgrind:
        result = measure_callgrind(args)
        rendered = callgrind_table(result)
    else:
        if shutil.which("wrk") is None:
            print("bench_cpu: wrk is needed (apt-get install wrk)", file=sys.stderr)
            return 2
        result = measure_wrk(args)
        rendered = wrk_table(result)
    print(rendered)
    result.update(date=time.strftime("%Y-%m-%d %H:%M:%S %z"), table=rendered,
                  load_average=os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
