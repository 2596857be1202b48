"""Run the long-polling benchmarks (``make bench``) and print the table of BENCHMARKS.md.

By default it starts our standalone server (``python -m wsgi_longpoll serve``) on a free
port of 127.0.0.1 and measures it; ``--url`` measures a server that is already running
instead (any server speaking the protocol: golongpoll, another build of ours), and
``--compare-url`` measures a second one in the same sitting, so the two can be compared.
``--golongpoll PATH`` starts golongpoll's reference build (``build-golongpoll.sh`` in the
team's shared reference) as that second server.
Figures are printed, written to ``results.json``, and plotted to ``fanout.png``; nothing
here passes or fails.

Then, when Go is installed (or ``--lpload`` names a built binary), the hot-channel table of
issue 21 (:mod:`lpload`): long polls and streams on 100 categories and on 1, and a fan-out,
measured with the Go load generator on both servers alternately; written to
``results/lpload.json`` and to its section of ``RESULTS.md`` (not by ``--quick``, whose
smoke figures would replace the real ones).

Examples::

    python benchmarks/run.py
    python benchmarks/run.py --quick
    python benchmarks/run.py --compare-url http://127.0.0.1:8081 --compare-pid 4242
    python benchmarks/run.py --golongpoll /path/to/golongpoll --only-lpload
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import lpload  # noqa: E402
from loadgen import Target  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: golongpoll v1.3.1's figures from BENCHMARKS.md (another sitting: a guide, not a rival).
GOLONGPOLL_REFERENCE = {
    "publish_rps": 37_900,
    "subscribe_rps": 30_500,
    "fanout_ms": {1000: 70, 5000: 268, 10000: 560},
    "rss_mb": {1000: 28, 5000: 111, 10000: 242},
    "kb_per_subscriber": 22,
}
#: The targets of issue 6.
TARGETS = {
    "publish_rps": ">= 19,000",
    "subscribe_rps": ">= 15,000",
    "fanout_10000": "<= 560 ms",
    "kb_per_subscriber": "<= 20 KB",
}

_started = time.monotonic()


def progress(label: str) -> loadgen.Progress:
    def report(message: str) -> None:
        elapsed = time.monotonic() - _started
        print(f"[{elapsed // 60:02.0f}:{elapsed % 60:02.0f}] {label}: {message}",
              file=sys.stderr, flush=True)

    return report


# -- the server under test ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def our_server(log_path: Path) -> Iterator[Target]:
    """Start ``python -m wsgi_longpoll serve`` on a free port; stop it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "wsgi_longpoll", "serve", "--address",
               f"127.0.0.1:{port}", "--no-access-log", "--log-level", "WARNING"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; "
                                   f"see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start listening in 30 s") from None
                time.sleep(0.05)
        yield Target("127.0.0.1", port, pid=process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def golongpoll_server(binary: Path, log_path: Path) -> Iterator[Target]:
    """Start golongpoll's reference build on a free port; stop it afterwards."""
    port = _free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(binary), "-addr", f"127.0.0.1:{port}"], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{binary} exited with {process.returncode}; see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not listen in 30 s") from None
                time.sleep(0.05)
        yield Target("127.0.0.1", port, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- requests per second -----------------------------------------------------------------


def _wrk(url: str, connections: int, duration: float, script: Path | None) -> loadgen.RateResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True,
                            timeout=duration + 60).stdout
    match = re.search(r"([0-9]+) requests in ([0-9.]+)(m?s)", output)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    seconds = float(match[2]) / (1000 if match[3] == "ms" else 1)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", output)
    if non_2xx:
        errors += int(non_2xx[1])
    return loadgen.RateResult(int(match[1]), seconds, errors, "wrk")


def measure_rates(target: Target, args: argparse.Namespace, label: str) -> dict[str, Any]:
    use_wrk = args.loadgen == "wrk"
    report = progress(label)
    results: dict[str, Any] = {}
    loadgen.publish_once(target, "bench-sub", "hello world")
    cases = {
        "publish_rps": (target.url + target.publish_path, HERE / "post.lua",
                        target.publish_request("bench", "hello world")),
        "subscribe_rps": (
            f"{target.url}{target.subscribe_path}?category=bench-sub&timeout=1&since_time=0",
            None, target.subscribe_request("bench-sub", 1, 0)),
    }
    for name, (url, script, request) in cases.items():
        what = "publish" if name == "publish_rps" else "immediate subscribe"
        tool = "wrk" if use_wrk else "the Python load generator"
        report(f"{what} requests/s with {tool}, {args.connections} connections, "
               f"{args.duration:g} s")
        cpu_before = loadgen.server_cpu_seconds(target.pid) if target.pid else None
        if use_wrk:
            rate = _wrk(url, args.connections, args.duration, script)
        else:
            rate = loadgen.keepalive_rate(target, request, args.connections, args.duration,
                                          report)
        cpu_us = None
        if cpu_before is not None and target.pid and rate.requests:
            cpu_us = ((loadgen.server_cpu_seconds(target.pid) - cpu_before)
                      / rate.requests * 1e6)
        report(f"{what}: {rate.per_second:,.0f} requests/s ({rate.errors} errors)"
               + (f", server CPU {cpu_us:.0f} us/request" if cpu_us else ""))
        results[name] = dataclasses.asdict(rate) | {"per_second": rate.per_second,
                                                    "server_cpu_us": cpu_us}
    return results


# -- one server, every figure --------------------------------------------------------------


def measure(target: Target, args: argparse.Namespace, label: str) -> dict[str, Any]:
    results: dict[str, Any] = {"url": target.url, "pid": target.pid}
    if target.pid:
        results["rss_idle_kb"] = loadgen.read_rss_kb(target.pid)
    if not args.skip_rates:
        results.update(measure_rates(target, args, label))
    fanouts = []
    for count in args.fanout:
        report = progress(f"{label} fan-out {count:,}")
        result = loadgen.fanout(target, count, report)
        report(f"{result.milliseconds:,.0f} ms to the last answer, "
               f"{result.bad_answers} bad answers"
               + (f", RSS {result.rss_parked_kb / 1024:,.1f} MB parked"
                  if result.rss_parked_kb else ""))
        fanouts.append(dataclasses.asdict(result))
    results["fanout"] = fanouts
    results["kb_per_subscriber"] = _kb_per_subscriber(fanouts)
    if args.sse:
        streams = []
        for count in args.fanout:
            report = progress(f"{label} stream fan-out {count:,}")
            result = loadgen.fanout(target, count, report, stream=True)
            report(f"{result.milliseconds:,.0f} ms until the last stream read the event, "
                   f"{result.bad_answers} bad"
                   + (f", RSS {result.rss_parked_kb / 1024:,.1f} MB with the streams open"
                      if result.rss_parked_kb else ""))
            streams.append(dataclasses.asdict(result))
        results["sse_fanout"] = streams
    if args.latency_subscribers:
        report = progress(f"{label} latency")
        latency = loadgen.delivery_latency(
            target, args.latency_subscribers, args.latency_rate, args.latency_seconds, report)
        report("p50 {p50:,.0f} ms, p99 {p99:,.0f} ms".format(**latency.percentiles_ms)
               if latency.percentiles_ms else "no deliveries")
        results["latency"] = dataclasses.asdict(latency) | {
            "publish_rate": latency.publish_rate}
    return results


def _kb_per_subscriber(fanouts: list[dict[str, Any]]) -> float | None:
    """(RSS with N parked - RSS with the fewest parked) / (N - fewest), for the largest N."""
    measured = [f for f in fanouts if f["rss_parked_kb"]]
    if len(measured) < 2:
        return None
    low, high = measured[0], measured[-1]
    return float(high["rss_parked_kb"] - low["rss_parked_kb"]) / (
        high["subscribers"] - low["subscribers"])


# -- output ------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def table(runs: dict[str, dict[str, Any]]) -> str:
    """The figures of every run, side by side, in Markdown."""
    names = list(runs)
    rows: list[tuple[str, list[str], str, str]] = []

    def rate(name: str) -> list[str]:
        cells = []
        for run in runs.values():
            found = run.get(name)
            cells.append("-" if found is None else
                         f"{found['per_second']:,.0f} ({found['tool']}"
                         + (f", {found['errors']} errors" if found["errors"] else "") + ")")
        return cells

    def cpu(name: str) -> list[str]:
        return [_fmt((run.get(name) or {}).get("server_cpu_us"), " us") for run in runs.values()]

    rows.append(("publish requests/s", rate("publish_rps"),
                 f"{GOLONGPOLL_REFERENCE['publish_rps']:,}", TARGETS["publish_rps"]))
    rows.append(("  server CPU per publish", cpu("publish_rps"), "", ""))
    rows.append(("immediate subscribe requests/s", rate("subscribe_rps"),
                 f"{GOLONGPOLL_REFERENCE['subscribe_rps']:,}", TARGETS["subscribe_rps"]))
    rows.append(("  server CPU per immediate answer", cpu("subscribe_rps"), "", ""))
    counts = sorted({f["subscribers"] for run in runs.values() for f in run["fanout"]})
    for count in counts:
        cells, memory = [], []
        for run in runs.values():
            found = next((f for f in run["fanout"] if f["subscribers"] == count), None)
            if found is None:
                cells.append("-")
                memory.append("-")
                continue
            bad = f" ({found['bad_answers']} bad)" if found["bad_answers"] else ""
            cells.append(_fmt(found["milliseconds"], " ms") + bad)
            memory.append(_fmt(found["rss_parked_kb"] and found["rss_parked_kb"] / 1024,
                               " MB", 1))
        reference = GOLONGPOLL_REFERENCE["fanout_ms"].get(count)
        rows.append((f"fan-out to {count:,} parked", cells,
                     _fmt(reference, " ms"), TARGETS["fanout_10000"] if count == 10000 else ""))
        per_answer = []
        for run in runs.values():
            found = next((f for f in run["fanout"] if f["subscribers"] == count), None)
            per_answer.append(_fmt(found and found["server_cpu_us_per_answer"], " us"))
        rows.append(("  server CPU per answer", per_answer, "", ""))
        reference = GOLONGPOLL_REFERENCE["rss_mb"].get(count)
        rows.append((f"RSS with {count:,} parked", memory, _fmt(reference, " MB"), ""))
        # No RSS row for streams: measured after the long polls of the same size, the
        # resident size holds what that run left (the heap does not shrink).
        streamed, stream_cpu = [], []
        for run in runs.values():
            found = next((f for f in run.get("sse_fanout", ()) if f["subscribers"] == count),
                         None)
            bad = f" ({found['bad_answers']} bad)" if found and found["bad_answers"] else ""
            streamed.append(_fmt(found and found["milliseconds"], " ms") + bad)
            stream_cpu.append(_fmt(found and found["server_cpu_us_per_answer"], " us"))
        if any(run.get("sse_fanout") for run in runs.values()):
            rows.append((f"fan-out to {count:,} open SSE streams", streamed, "", ""))
            rows.append(("  server CPU per stream", stream_cpu, "", ""))
    rows.append(("memory per parked subscriber",
                 [_fmt(run["kb_per_subscriber"], " KB", 1) for run in runs.values()],
                 f"~{GOLONGPOLL_REFERENCE['kb_per_subscriber']} KB",
                 TARGETS["kb_per_subscriber"]))
    for key in ("p50", "p99"):
        cells = []
        for run in runs.values():
            latency = run.get("latency")
            cells.append("-" if not latency or key not in latency["percentiles_ms"] else
                         _fmt(latency["percentiles_ms"][key], " ms"))
        rows.append((f"delivery latency {key}", cells, "", ""))
    cells = []
    for run in runs.values():
        latency = run.get("latency")
        cells.append("-" if not latency else
                     f"{latency['subscribers']:,} subs, {latency['publish_rate']:.0f}/s, "
                     f"{latency['deliveries']:,}/{latency['expected_deliveries']:,} delivered"
                     + (f", {latency['missed']:,} missed (evicted before the re-poll)"
                        if latency["missed"] else ""))
    rows.append(("latency test", cells, "", ""))

    header = ["figure", *names, "golongpoll (BENCHMARKS.md)", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for title, cells, reference, target in rows:
        lines.append("| " + " | ".join([title, *cells, reference, target]) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Fan-out time and resident memory against parked subscribers, one curve a server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, run in runs.items():
        fanouts = run["fanout"]
        counts = [f["subscribers"] for f in fanouts]
        left.plot(counts, [f["milliseconds"] for f in fanouts], "o-", label=name)
        if all(f["rss_parked_kb"] for f in fanouts):
            right.plot(counts, [f["rss_parked_kb"] / 1024 for f in fanouts], "o-", label=name)
    reference = "golongpoll (BENCHMARKS.md, another sitting)"
    counts = sorted(GOLONGPOLL_REFERENCE["fanout_ms"])
    left.plot(counts, [GOLONGPOLL_REFERENCE["fanout_ms"][c] for c in counts], "s--",
              color="grey", alpha=0.6, label=reference)
    right.plot(counts, [GOLONGPOLL_REFERENCE["rss_mb"][c] for c in counts], "s--",
               color="grey", alpha=0.6, label=reference)
    left.set(title="publish -> last answer", xlabel="parked subscribers", ylabel="ms")
    right.set(title="server resident memory (VmRSS)", xlabel="parked subscribers",
              ylabel="MB")
    for axes in (left, right):
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "wsgi_longpoll"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part.replace("_", "")) for part in text.split(",") if part})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 1000,5000, not {text!r}") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("subscriber counts must be at least 1")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure a long-polling server: requests/s, fan-out, memory, latency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", help="measure the server at this URL instead of starting ours")
    parser.add_argument("--pid", type=int, help="process id of --url's server (for its memory)")
    parser.add_argument("--name", default=None, help="what to call the first server")
    parser.add_argument("--compare-url", help="also measure the server at this URL")
    parser.add_argument("--compare-pid", type=int, help="process id of --compare-url's server")
    parser.add_argument("--compare-name", default="other", help="what to call the second server")
    parser.add_argument("--subscribe-path", default="/events")
    parser.add_argument("--publish-path", default="/publish")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="what drives the requests/s runs: wrk when installed (auto)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of each requests/s run")
    parser.add_argument("--fanout", type=_counts, default=[1000, 5000, 10000],
                        help="parked subscriber counts for fan-out and memory")
    parser.add_argument("--latency-subscribers", type=int, default=10_000,
                        help="subscribers of the latency test (0 skips it)")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="publishes/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0,
                        help="how long the latency test publishes")
    parser.add_argument("--skip-rates", action="store_true", help="skip the requests/s runs")
    parser.add_argument("--sse", action="store_true",
                        help="also measure fan-out to open Server-Sent Events streams "
                        "(the same counts as --fanout)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: 2 s rates, fan-out to 200/1000, "
                        "latency with 1,000 subscribers for 3 s")
    parser.add_argument("--golongpoll", type=Path, default=None, metavar="PATH",
                        help="start this golongpoll reference binary and measure it as the "
                        "second server (named golongpoll)")
    parser.add_argument("--compare-sse", action="store_true",
                        help="the second server streams Server-Sent Events (golongpoll "
                        "does not: its stream rows are left out)")
    parser.add_argument("--lpload", type=Path, default=None, metavar="PATH",
                        help="a built lpload binary (default: build it with Go into "
                        ".venv/lpload)")
    parser.add_argument("--lpload-source", type=Path, default=None, metavar="DIR",
                        help="lpload's source folder (default: $LPLOAD_SOURCE, else "
                        "../shared/reference/lpload beside the checkout)")
    parser.add_argument("--skip-lpload", action="store_true",
                        help="leave out the hot-channel table (lpload)")
    parser.add_argument("--only-lpload", action="store_true",
                        help="only the hot-channel table (lpload)")
    parser.add_argument("--results-md", type=Path, default=None, metavar="PATH",
                        help="where the hot-channel section goes (default: RESULTS.md "
                        "beside this script; a --quick run writes none unless given)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="directory for results.json, fanout.png and lpload.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.duration, args.fanout = 2.0, [200, 1000]
        args.latency_subscribers = min(args.latency_subscribers, 1000)
        args.latency_seconds = 3.0
    settings = lpload.Settings.quick() if args.quick else lpload.Settings()
    if args.golongpoll is not None and args.compare_name == "other":
        args.compare_name = "golongpoll"
    limit = loadgen.raise_open_files_limit()
    largest = max([*args.fanout, args.latency_subscribers]
                  + ([] if args.skip_lpload else [settings.subscribers, settings.fanout]))
    if largest + 100 > limit:
        print(f"run.py: {largest:,} subscribers need more than the {limit:,} open files "
              f"this process may have", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
        if args.loadgen == "python":
            print("run.py: wrk is not installed; requests/s come from the Python load "
                  "generator, which saturates near 10,000 requests/s", file=sys.stderr)
    print(f"run.py: requests/s measured with {args.loadgen}", file=sys.stderr)

    commit = _commit()  # once: others may commit while the benchmark runs
    with contextlib.ExitStack() as stack:
        if args.golongpoll is not None:
            started = stack.enter_context(
                golongpoll_server(args.golongpoll, args.out / "golongpoll.log"))
            args.compare_url, args.compare_pid = started.url, started.pid
        if not args.only_lpload:
            measure_all(args, commit)
        if not args.skip_lpload:
            measure_lpload(args, commit, settings)
    print(f"{time.monotonic() - _started:.0f} s in all", file=sys.stderr)
    return 0


def first_server(args: argparse.Namespace, commit: str,
                 stack: contextlib.ExitStack) -> tuple[str, Target]:
    """The first server's name and target: ``--url``'s, or ours, started on *stack*."""
    if args.url:
        return (args.name or "server",
                Target.from_url(args.url, args.subscribe_path, args.publish_path, args.pid))
    return (args.name or f"wsgi_longpoll {commit}",
            stack.enter_context(our_server(args.out / "server.log")))


def measure_all(args: argparse.Namespace, commit: str) -> None:
    """Requests/s, fan-out, memory and latency (the table of BENCHMARKS.md)."""
    runs: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        first_name, first = first_server(args, commit, stack)
        runs[first_name] = measure(first, args, first_name)
    if args.compare_url:
        second = Target.from_url(args.compare_url, args.subscribe_path, args.publish_path,
                                 args.compare_pid)
        runs[args.compare_name] = measure(second, args, args.compare_name)

    rendered = table(runs)
    print(rendered)
    document = {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "options": {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in vars(args).items()},
        "runs": runs,
        "table": rendered,
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    try:
        plot(runs, args.out / "fanout.png")
    except ImportError:
        print("run.py: matplotlib is not installed; no plot (pip install -r "
              "benchmarks/requirements.txt)", file=sys.stderr)
    else:
        print(f"\nplot: {args.out / 'fanout.png'}", file=sys.stderr)
    print(f"figures: {args.out / 'results.json'}", file=sys.stderr)


def _shown(path: Path) -> str:
    """*path*, relative to the checkout when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def lpload_binary(args: argparse.Namespace) -> Path | None:
    """``--lpload``, or lpload built from its source; ``None`` (said why) when neither."""
    if args.lpload is not None:
        return Path(args.lpload)
    source = lpload.find_source(args.lpload_source)
    if source is None:
        print("run.py: no hot-channel table: lpload's source was not found; give "
              "--lpload-source DIR (../shared/reference/lpload) or set LPLOAD_SOURCE",
              file=sys.stderr)
        return None
    if shutil.which("go") is None:
        print(f"run.py: no hot-channel table: {lpload.GO_MISSING}", file=sys.stderr)
        return None
    progress("lpload")(f"building {lpload.DEFAULT_BINARY} from {source}")
    return lpload.build(source)


def measure_lpload(args: argparse.Namespace, commit: str, settings: lpload.Settings) -> None:
    """The hot-channel table of issue 21 (see :mod:`lpload`), on a freshly started server."""
    binary = lpload_binary(args)
    if binary is None:
        return
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        first_name, first = first_server(args, commit, stack)
        servers = {first_name: (first.url, first.pid, True)}
        if args.compare_url:
            servers[args.compare_name] = (args.compare_url.rstrip("/"), args.compare_pid,
                                          args.compare_sse)
        results = lpload.measure(binary, servers, settings, progress("lpload"))
    load_after = os.getloadavg()[0]
    rendered = lpload.table(results, list(servers), settings)
    print(rendered)
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    document = {"commit": commit, "date": date, "settings": dataclasses.asdict(settings),
                "servers": {name: {"url": url, "pid": pid, "streams": streams}
                            for name, (url, pid, streams) in servers.items()},
                "load_average": [load_before, load_after], "results": results,
                "table": rendered}
    (args.out / "lpload.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"figures: {args.out / 'lpload.json'}", file=sys.stderr)
    markdown = args.results_md or (None if args.quick else HERE / "RESULTS.md")
    if markdown is None:
        print("run.py: a --quick run leaves RESULTS.md alone", file=sys.stderr)
        return
    details = [
        f"Measured {date} at commit `{commit}` ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}), load average {load_before:.2f} before and "
        f"{load_after:.2f} after (1-min); the servers alternately within each row, "
        f"lpload `{_shown(binary)}`.",
    ]
    lpload.write_section(markdown, lpload.section(
        rendered, settings, "Hot channel (issue 21): lpload", details))
    print(f"table: the hot-channel section of {markdown}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
