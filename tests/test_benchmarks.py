"""The benchmark harness's own logic: reading lpload's and wrk's output, writing the tables
and the section of benchmarks/RESULTS.md. No timing: nothing here runs a load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if not (BENCHMARKS / "lpload.py").is_file():  # an unpacked sdist has no benchmarks
    pytest.skip("the benchmarks are not in this tree", allow_module_level=True)
sys.path.insert(0, str(BENCHMARKS))

import bench_cpu  # noqa: E402
import lpload  # noqa: E402

LATENCY_OUTPUT = """\
expected 10000000
delivered 9999670
missed 330
duplicates 0
latency_p50_ms 990.4
latency_p90_ms 1800.0
latency_p99_ms 2300.2
latency_max_ms 4100.0
answers_per_s 20000
server_cpu_s 14.52
"""
CLEAN_OUTPUT = """\
expected 1000000
delivered 1000000
missed 0
duplicates 0
latency_p50_ms 2.2
latency_p90_ms 9.0
latency_p99_ms 52.0
latency_max_ms 80.0
answers_per_s 1000
"""
FANOUT_OUTPUT = "fanout_10000_answered 10000\nfanout_10000_ms 132.5\nfanout_10000_cpu_us 9.4\n"


def test_lpload_figures_are_read_from_its_name_value_lines() -> None:
    figures = lpload.parse("lpload: 10000 parked, publishing\n" + LATENCY_OUTPUT + "\n")
    assert figures["expected"] == 10_000_000
    assert figures["missed"] == 330
    assert figures["latency_p99_ms"] == 2300.2
    assert figures["server_cpu_s"] == 14.52
    assert "lpload:" not in " ".join(figures)


def test_fanout_figures_are_read_without_the_subscriber_count() -> None:
    assert lpload.parse(FANOUT_OUTPUT) == {"answered": 10000, "ms": 132.5, "cpu_us": 9.4}


def test_the_command_line_of_each_shape() -> None:
    settings = lpload.Settings()
    shapes = {shape.key: shape for shape in lpload.SHAPES}
    line = lpload.command(Path("/x/lpload"), "http://127.0.0.1:1", shapes["sse_1"], settings,
                          42)
    assert line == ["/x/lpload", "latency", "-url", "http://127.0.0.1:1", "-subs", "10000",
                    "-categories", "1", "-rate", "100", "-seconds", "10", "-sse",
                    "-pid", "42"]
    line = lpload.command(Path("lpload"), "http://127.0.0.1:1", shapes["fanout"], settings,
                          None)
    assert line == ["lpload", "fanout", "-url", "http://127.0.0.1:1", "-n", "10000"]


def test_the_table_has_a_row_per_shape_and_a_column_per_server() -> None:
    settings = lpload.Settings()
    ours, theirs = "wsgi_longpoll", "golongpoll"
    results = {
        "poll_100": {ours: {"figures": lpload.parse(CLEAN_OUTPUT)},
                     theirs: {"figures": lpload.parse(CLEAN_OUTPUT)}},
        "poll_1": {ours: {"figures": lpload.parse(CLEAN_OUTPUT)},
                   theirs: {"figures": lpload.parse(LATENCY_OUTPUT)}},
        "sse_1": {ours: {"figures": lpload.parse(CLEAN_OUTPUT)}, theirs: None},
        "fanout": {ours: {"figures": lpload.parse(FANOUT_OUTPUT)},
                   theirs: {"figures": {"answered": 9000, "ms": 1500.0, "cpu_us": 25.0}}},
    }
    lines = lpload.table(results, [ours, theirs], settings).splitlines()
    assert lines[0] == "| shape | wsgi_longpoll | golongpoll |"
    assert len(lines) == 2 + 4  # header, rule, one row per shape measured
    assert lines[2] == ("| long polls, 100 categories (100 subscribers each) "
                        "| p50 2.2 ms, p99 52 ms, none missed "
                        "| p50 2.2 ms, p99 52 ms, none missed |")
    assert lines[3].endswith("| 99.997 % delivered (330 missed), p50 990 ms, p99 2.3 s, "
                             "server CPU 14.5 s |")
    assert lines[4] == ("| Server-Sent Events, 1 category | p50 2.2 ms, p99 52 ms, "
                        "none missed | - |")
    assert lines[5] == ("| fan-out of one publish to 10,000 parked polls "
                        "| 132 ms, 9.4 us CPU per answer "
                        "| 1.5 s, 25.0 us CPU per answer, 9,000 of 10,000 answered |")


def test_the_results_section_replaces_its_previous_version_and_keeps_the_rest(
        tmp_path: Path) -> None:
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Phase 1\n\nold figures\n")
    settings = lpload.Settings.quick()
    lpload.write_section(results_md, lpload.section("| first |", settings, "Hot channel",
                                                    ["run one"]))
    lpload.write_section(results_md, lpload.section("| second |", settings, "Hot channel",
                                                    ["run two"]))
    text = results_md.read_text()
    assert text.startswith("# Benchmark results\n\n## Phase 1\n\nold figures\n\n")
    assert text.count(lpload.SECTION_BEGIN) == text.count(lpload.SECTION_END) == 1
    assert "| second |" in text and "run two" in text
    assert "| first |" not in text and "run one" not in text
    assert "1,000 subscribers, 100 publishes/s for 1 s" in text


def test_a_missing_go_is_reported_with_how_to_get_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "main.go").write_text("package main\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no go there
    with pytest.raises(RuntimeError, match="apt-get install golang-go"):
        lpload.build(tmp_path, tmp_path / "lpload")


def test_wrk_output_and_the_cpu_ratio_table() -> None:
    output = ("Running 5s test @ http://127.0.0.1:1/publish\n"
              "  150000 requests in 5.00s, 20.00MB read\n"
              "  Socket errors: connect 0, read 2, write 0, timeout 1\n"
              "Non-2xx or 3xx responses: 3\n")
    assert bench_cpu.parse_wrk(output) == (150000, 5.0, 6)
    run = {"per_second": 30000.0}
    result = {"servers": ["ours", "golongpoll"], "rounds": [
        {"ours": {"publish": run | {"cpu_us": 21.0}, "subscribe": run | {"cpu_us": 16.0}},
         "golongpoll": {"publish": run | {"cpu_us": 14.0},
                        "subscribe": run | {"cpu_us": 16.0}}},
    ]}
    lines = bench_cpu.wrk_table(result).splitlines()
    assert lines[2].endswith("| 21.0 us | 14.0 us | 1.50x |")
    assert lines[3].endswith("| 16.0 us | 16.0 us | 1.00x |")
    assert lines[-1] == "| median | immediate subscribe |  |  |  |  | **1.00x** |"
