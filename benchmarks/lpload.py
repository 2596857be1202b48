"""The hot-channel table of issue 21, measured with ``lpload`` (the Go load generator).

``lpload`` (``../shared/reference/lpload``, one Go file, no dependencies) is light enough
not to be the bound when it shares a small machine with the server. This module builds it
with Debian's Go into ``.venv/lpload`` (again when its source is newer), runs its shapes
against each server, reads its ``name value`` lines, and writes the table:

- long polls, 100 categories (100 subscribers each) and 1 category (every event to every
  subscriber: the hot channel); 10,000 subscribers re-polling with the resume cursor,
  100 publishes/s for 10 s, then 5 s to drain;
- Server-Sent Events, the same two shapes (skipped for a server that does not stream,
  such as golongpoll: ``-``);
- fan-out of one publish to 10,000 parked long polls: the time to the last answer and the
  server's CPU per answer.

Nothing passes or fails. ``run.py`` drives it (``make bench``); the table goes to
``results/lpload.json`` and to the section of ``RESULTS.md`` between
:data:`SECTION_BEGIN` and :data:`SECTION_END` (the rest of the file is kept).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Where the lpload source is looked for when ``--lpload-source`` does not say.
DEFAULT_SOURCES = (
    ROOT.parent / "shared" / "reference" / "lpload",  # a checkout beside ../shared
    ROOT.parent.parent / "shared" / "reference" / "lpload",  # a worktree one level down
)
#: The built binary (rebuilt when the source is newer).
DEFAULT_BINARY = ROOT / ".venv" / "lpload"

GO_MISSING = ("lpload needs Go to build: apt-get install golang-go "
              "(or give a built binary with --lpload PATH)")

SECTION_BEGIN = "<!-- lpload table: written by benchmarks/run.py, do not edit by hand -->"
SECTION_END = "<!-- end of the lpload table -->"


@dataclasses.dataclass(frozen=True)
class Shape:
    """One row of the table: an ``lpload`` run."""

    key: str
    title: str
    mode: str  # "latency" or "fanout"
    categories: int = 0
    sse: bool = False


SHAPES = (
    Shape("poll_100", "long polls, 100 categories", "latency", 100),
    Shape("poll_1", "long polls, 1 category (every event to every subscriber)", "latency", 1),
    Shape("sse_100", "Server-Sent Events, 100 categories", "latency", 100, sse=True),
    Shape("sse_1", "Server-Sent Events, 1 category", "latency", 1, sse=True),
    Shape("fanout", "fan-out of one publish to N parked polls", "fanout"),
)


@dataclasses.dataclass
class Settings:
    """How big each run is (issue 21's figures by default)."""

    subscribers: int = 10_000
    rate: float = 100.0
    seconds: float = 10.0
    fanout: int = 10_000
    shapes: tuple[str, ...] = tuple(shape.key for shape in SHAPES)

    @classmethod
    def quick(cls) -> Settings:
        """A smoke run: 1,000 subscribers, 1 s of publishing, the two hot-channel shapes."""
        return cls(subscribers=1000, seconds=1.0, fanout=1000,
                   shapes=("poll_1", "sse_1", "fanout"))


# -- building --------------------------------------------------------------------------


def find_source(given: Path | None = None) -> Path | None:
    """The lpload source folder: *given*, ``$LPLOAD_SOURCE``, or a default place."""
    candidates = [given] if given is not None else []
    if os.environ.get("LPLOAD_SOURCE"):
        candidates.append(Path(os.environ["LPLOAD_SOURCE"]))
    candidates += DEFAULT_SOURCES
    for candidate in candidates:
        if candidate is not None and (candidate / "main.go").is_file():
            return candidate.resolve()
    return None


def build(source: Path, binary: Path = DEFAULT_BINARY) -> Path:
    """Build lpload from *source* into *binary* unless it is up to date; return it.

    :raises RuntimeError: if Go is missing or the build fails.
    """
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(GO_MISSING)
    newest = max(path.stat().st_mtime for path in source.glob("*.go"))
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, GO111MODULE="off", GOFLAGS="")
    completed = subprocess.run([go, "build", "-o", str(binary), "."], cwd=source,
                               env=environment, capture_output=True, text=True, timeout=600)
    if completed.returncode:
        raise RuntimeError(f"building lpload failed:\n{completed.stderr[-2000:]}")
    return binary


# -- running and reading ---------------------------------------------------------------


def parse(output: str) -> dict[str, float]:
    """lpload's figures: one ``name value`` line each (other lines are left out).

    ``fanout`` names its figures ``fanout_<N>_ms`` and so on; they are read as ``ms``,
    ``answered`` and ``cpu_us``.
    """
    figures: dict[str, float] = {}
    for line in output.splitlines():
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*) (-?[0-9]+(?:\.[0-9]+)?)", line.strip())
        if match is None:
            continue
        name = re.sub(r"^fanout_[0-9]+_", "", match[1])
        figures[name] = float(match[2])
    return figures


def command(binary: Path, url: str, shape: Shape, settings: Settings,
            pid: int | None) -> list[str]:
    """The lpload command line of *shape* against the server at *url*."""
    if shape.mode == "fanout":
        arguments = ["fanout", "-url", url, "-n", str(settings.fanout)]
    else:
        arguments = ["latency", "-url", url, "-subs", str(settings.subscribers),
                     "-categories", str(shape.categories), "-rate", f"{settings.rate:g}",
                     "-seconds", f"{settings.seconds:g}"]
        if shape.sse:
            arguments.append("-sse")
    if pid:
        arguments += ["-pid", str(pid)]
    return [str(binary), *arguments]


def run(binary: Path, url: str, shape: Shape, settings: Settings, pid: int | None,
        progress: Callable[[str], None]) -> dict[str, Any]:
    """One lpload run: its figures, the command, and how long it took."""
    line = command(binary, url, shape, settings, pid)
    progress(f"{shape.title}: {' '.join(line[1:])}")
    started = time.monotonic()
    completed = subprocess.run(line, capture_output=True, text=True,
                               timeout=settings.seconds + 180)
    if completed.returncode:
        raise RuntimeError(f"lpload failed ({completed.returncode}): "
                           f"{completed.stderr[-1000:]}")
    figures = parse(completed.stdout)
    progress(f"{shape.title}: {format_cell(shape, figures, settings)}")
    return {"figures": figures, "command": line, "seconds": time.monotonic() - started}


def measure(binary: Path, servers: dict[str, tuple[str, int | None, bool]],
            settings: Settings, progress: Callable[[str], None],
            settle: float = 1.0) -> dict[str, dict[str, Any]]:
    """Every shape of *settings* on every server, the servers alternately within a shape.

    :param servers: name -> (base URL, process id or ``None``, whether it streams).
    :returns: shape key -> server name -> :func:`run`'s result (``None``: not run).
    """
    results: dict[str, dict[str, Any]] = {}
    for shape in SHAPES:
        if shape.key not in settings.shapes:
            continue
        row: dict[str, Any] = {}
        for name, (url, pid, streams) in servers.items():
            if shape.sse and not streams:
                row[name] = None
                continue
            row[name] = run(binary, url, shape, settings, pid,
                            lambda message, name=name: progress(f"{name} {message}"))
            time.sleep(settle)  # the last connections close before the next run
        results[shape.key] = row
    return results


# -- the table -------------------------------------------------------------------------


def _duration(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 10:
        return f"{ms:.0f} ms"
    return f"{ms:.2g} ms"


def format_cell(shape: Shape, figures: dict[str, float] | None, settings: Settings) -> str:
    """One server's figures for *shape*, as the issue's table words them."""
    if figures is None:
        return "-"
    if shape.mode == "fanout":
        answered = int(figures.get("answered", 0))
        cell = _duration(figures["ms"]) if "ms" in figures else "no answer"
        if "cpu_us" in figures:
            cell += f", {figures['cpu_us']:.1f} us CPU per answer"
        if answered < settings.fanout:
            cell += f", {answered:,} of {settings.fanout:,} answered"
        return cell
    expected = int(figures.get("expected", 0))
    missed = int(figures.get("missed", 0))
    if not expected:
        delivered = "nothing acknowledged"
    elif not missed:
        delivered = "none missed"
    else:
        share = 100 * (expected - missed) / expected
        delivered = f"{share:.3f} % delivered ({missed:,} missed)"
    latency = (f"p50 {_duration(figures.get('latency_p50_ms', 0))}, "
               f"p99 {_duration(figures.get('latency_p99_ms', 0))}")
    duplicates = int(figures.get("duplicates", 0))
    cell = f"{latency}, {delivered}" if not missed else f"{delivered}, {latency}"
    if duplicates:
        cell += f", {duplicates:,} duplicates"
    if "server_cpu_s" in figures:
        cell += f", server CPU {figures['server_cpu_s']:.1f} s"
    return cell


def table(results: dict[str, dict[str, Any]], names: Sequence[str],
          settings: Settings) -> str:
    """The Markdown table: one row per shape run, one column per server."""
    header = ["shape", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shape in SHAPES:
        row = results.get(shape.key)
        if row is None:
            continue
        title = shape.title
        if shape.mode == "fanout":
            title = title.replace("N", f"{settings.fanout:,}")
        elif shape.categories > 1:
            title += f" ({settings.subscribers // shape.categories:,} subscribers each)"
        cells = [format_cell(shape, (row.get(name) or {}).get("figures"), settings)
                 for name in names]
        lines.append("| " + " | ".join([title, *cells]) + " |")
    return "\n".join(lines)


def section(rendered: str, settings: Settings, heading: str, details: Sequence[str]) -> str:
    """The RESULTS.md section around the table *rendered*."""
    latency = (f"{settings.subscribers:,} subscribers, {settings.rate:g} publishes/s for "
               f"{settings.seconds:g} s, then 5 s to drain")
    return "\n".join([
        SECTION_BEGIN,
        f"## {heading}",
        "",
        *details,
        "",
        f"Long polls and streams: {latency}; fan-out: one publish to "
        f"{settings.fanout:,} parked long polls. Latencies are from the publish's send to "
        "the subscriber's read, per first delivery; *missed* counts acknowledged (subscriber, "
        "event) pairs never delivered. Regenerate with `make bench` (Go needed to build "
        "lpload).",
        "",
        rendered,
        SECTION_END,
    ])


def write_section(path: Path, text: str) -> None:
    """Put *text* (a :func:`section`) in *path*: in place of the previous one, or at the
    end; every other part of the file is kept as it is."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION_BEGIN)
    end = old.find(SECTION_END, start)
    if start >= 0 and end >= 0:
        new = old[:start] + text + old[end + len(SECTION_END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    path.write_text(new)
