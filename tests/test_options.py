"""One definition per option (:mod:`wsgi_longpoll.options`): each default written once,
every option reachable from every entry point under its one name, and configuration
values converted, or refused by the name they were given under."""

from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

import wsgi_longpoll
from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.cli import build_parser, server_info, server_options
from wsgi_longpoll.contrib import flask as flask_integration
from wsgi_longpoll.contrib._common import CONFIG_OPTIONS, MANAGER_OPTIONS
from wsgi_longpoll.contrib.django import conf as django_conf
from wsgi_longpoll.endpoints import EndpointOptions
from wsgi_longpoll.engines import MemoryEngine, MemoryOptions, RedisOptions
from wsgi_longpoll.engines.redis import RedisEngine
from wsgi_longpoll.manager import ManagerOptions
from wsgi_longpoll.options import convert, option, options_of
from wsgi_longpoll.server import ServerInfo, ServerOptions
from wsgi_longpoll.wsgi.cors import CORSMiddleware, CORSOptions

#: Every option, by name: the integrations' and the server's own.
OPTIONS = {**CONFIG_OPTIONS, **options_of(ServerOptions)}
PACKAGE = pathlib.Path(wsgi_longpoll.__file__).parent

#: Literal defaults under an option's name that are not a second definition of it, or
#: that are known and listed for removal: (module, option) -> why.
KNOWN_LITERALS = {
    ("wsgi_longpoll/protocol.py", "max_categories"):
        "parse_subscribe_query's per-request limit, another thing of the same name",
}


def _is_literal(node: ast.expr) -> bool:
    """A value written out (``250``, ``"wsgi_longpoll:"``, ``1024 * 1024``), not None or a
    bool, which say "off" and are left out."""
    if isinstance(node, ast.BinOp):
        return _is_literal(node.left) and _is_literal(node.right)
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return False
    return value is not None and not isinstance(value, bool)


def _written_defaults() -> dict[str, list[tuple[str, int]]]:
    """Where the package writes a literal default for an option: a parameter, a class
    attribute (or ``default_<name>``), a configuration dict's key, an argparse ``dest``
    named after it; by option name."""
    names: dict[str, str] = {}
    for item in [*CONFIG_OPTIONS.values(), *options_of(ServerOptions).values()]:
        for name in (item.name, item.attribute):
            names[name] = names[f"default_{name}"] = item.name
    keys = {item.key: item.name for item in OPTIONS.values()}
    found: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            pairs: list[tuple[str, ast.expr]] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                positional = [*arguments.posonlyargs, *arguments.args]
                with_defaults = positional[len(positional) - len(arguments.defaults):]
                pairs += [(a.arg, d) for a, d in zip(with_defaults, arguments.defaults,
                                                             strict=True)]
                pairs += [(a.arg, d) for a, d in zip(arguments.kwonlyargs,
                                                      arguments.kw_defaults, strict=True)
                          if d is not None]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                value = node.value
                if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                        and value.func.id == "option" and value.args):
                    value = value.args[0]
                if value is not None:
                    pairs.append((node.target.id, value))
            elif isinstance(node, ast.Assign):
                pairs += [(target.id, node.value) for target in node.targets
                          if isinstance(target, ast.Name)]
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        name = keys.get(key.value.removeprefix("LONGPOLL_"))
                        if name is not None:
                            pairs.append((name, value))
            elif isinstance(node, ast.Call):
                keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                dest, default = keywords.get("dest"), keywords.get("default")
                if isinstance(dest, ast.Constant) and default is not None:
                    pairs.append((str(dest.value), default))
            for name, value in pairs:
                if name in names and _is_literal(value):
                    found.setdefault(names[name], []).append((module, value.lineno))
    return found


def test_no_default_is_written_twice() -> None:
    found = _written_defaults()
    known = {(module, name) for name, places in found.items() for module, _ in places
             if (module, name) in KNOWN_LITERALS}
    assert known == set(KNOWN_LITERALS), "KNOWN_LITERALS lists what is gone"
    definitions = [item for item in [*CONFIG_OPTIONS.values(), *options_of(ServerOptions).values()]
                   if item.spec.source is None]
    # The scan finds each definition itself (a literal in option()), so a second place too.
    expected = Counter(item.name for item in definitions
                       if item.default is not None and not isinstance(item.default, bool))
    for name in OPTIONS:
        places = [place for place in found.get(name, []) if (place[0], name) not in KNOWN_LITERALS]
        assert len(places) == expected[name], f"{name}'s default is written at {places}"


def _signature_defaults(function: Any) -> dict[str, Any]:
    return {name: parameter.default
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(
    ("entry_point", "options"),
    [
        (LongpollManager, MANAGER_OPTIONS),
        (MemoryEngine, options_of(MemoryOptions)),
        (RedisEngine, options_of(RedisOptions)),
        (LongpollMiddleware, options_of(EndpointOptions)),
        (CORSMiddleware, options_of(CORSOptions)),
    ],
    ids=["LongpollManager", "MemoryEngine", "RedisEngine", "LongpollMiddleware",
         "CORSMiddleware"],
)
def test_constructors_take_the_definitions_defaults(entry_point: Any, options: Any) -> None:
    defaults = _signature_defaults(entry_point)
    compared = 0
    for item in options.values():
        for name in (item.name, item.attribute):
            if name in defaults:
                assert defaults[name] == item.default, name
                compared += 1
    assert compared >= len(options) - 1  # all but a required one (RedisEngine's url)


def test_copies_take_the_defaults_of_what_they_copy() -> None:
    for cls in (ServerOptions, ServerInfo):
        for item in options_of(cls).values():
            if item.spec.source is None:
                continue
            original = options_of(item.spec.source)[item.original]
            assert (item.default, item.help, item.spec.check) \
                == (original.default, original.help, original.spec.check), item.name
            assert item.kinds == original.kinds or item.kinds < original.kinds, item.name


def test_the_command_line_takes_the_definitions_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert server_options(args) == ServerOptions()
    info = server_info(args)
    assert ServerInfo(address=info.address) == info


def test_the_integrations_take_the_definitions_defaults() -> None:
    for item in CONFIG_OPTIONS.values():
        assert flask_integration.DEFAULTS[f"LONGPOLL_{item.key}"] == item.default
        assert django_conf.DEFAULTS[item.key] == item.default


def _flags() -> set[str]:
    serve = next(action for action in build_parser()._actions
                 if isinstance(action, argparse._SubParsersAction)).choices["serve"]
    return {flag for action in serve._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", sorted(CONFIG_OPTIONS))
def test_every_option_is_reachable_from_every_entry_point_under_its_name(name: str) -> None:
    item = CONFIG_OPTIONS[name]
    server = options_of(ServerOptions)
    seed = {copy.original: copy for copy in options_of(ServerInfo).values()}
    assert name in server or name in seed, f"neither ServerOptions nor ServerInfo has {name}"
    dashed = name.replace("_", "-")
    assert {f"--{dashed}", f"--no-{dashed}"} & _flags(), f"no --{dashed}"
    assert f"LONGPOLL_{name.upper()}" in flask_integration.DEFAULTS
    assert name.upper() in django_conf.DEFAULTS
    if name in MANAGER_OPTIONS:
        assert name in inspect.signature(LongpollManager).parameters
    assert item.help


def test_every_server_option_has_its_flag() -> None:
    flags = _flags()
    for item in [*options_of(ServerOptions).values(), *options_of(ServerInfo).values()]:
        assert item.flag in flags or set(item.spec.aliases) & flags, item.name


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("max_event_buffer_size", "250", 250),
        ("max_event_buffer_size", " 3 ", 3),
        ("max_longpoll_timeout_seconds", 0, 0),
        ("event_time_to_live_seconds", "1.5", 1.5),
        ("event_time_to_live_seconds", "0", None),
        ("event_time_to_live_seconds", "None", None),
        ("event_time_to_live_seconds", 60, 60),
        ("max_memory_bytes", 0, None),
        ("delete_event_after_first_retrieval", "yes", True),
        ("delete_event_after_first_retrieval", "off", False),
        ("delete_event_after_first_retrieval", False, False),
        ("redis_url", "", None),
        ("redis_url", "rediss://:secret@redis.example:6380/1", "rediss://:secret@redis.example:6380/1"),
        ("publish_path", "none", "none"),
        ("publish_path", "", None),
        ("cors_origins", "https://a.example, https://b.example",
         ("https://a.example", "https://b.example")),
        ("cors_origins", ["https://a.example"], ("https://a.example",)),
        ("cors_allow_headers", "", ()),
        ("sse_keepalive_seconds", 2, 2),
    ],
)
def test_configuration_values_are_converted(name: str, given: Any, expected: Any) -> None:
    assert convert(CONFIG_OPTIONS[name], given, "KEY") == expected


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        ("max_event_buffer_size", "many", "KEY must be an integer, not 'many'"),
        ("max_event_buffer_size", "2.5", "KEY must be an integer, not '2.5'"),
        ("max_event_buffer_size", 2.5, "KEY must be an integer, not 2.5"),
        ("max_event_buffer_size", True, "KEY must be an integer, not True"),
        ("max_event_buffer_size", None, "KEY must be an integer, not None"),
        ("max_event_buffer_size", "0", "KEY must be at least 1, not 0"),
        ("event_time_to_live_seconds", "soon", "KEY must be a number or None, not 'soon'"),
        ("event_time_to_live_seconds", -1, "KEY must be at least 0, not -1"),
        ("sse_keepalive_seconds", "nan", "KEY must be a number, not 'nan'"),
        ("sse_keepalive_seconds", 0, "KEY must be more than 0, not 0"),
        ("delete_event_after_first_retrieval", "maybe", "KEY must be True or False"),
        ("delete_event_after_first_retrieval", 1, "KEY must be True or False, not 1"),
        ("redis_url", "http://127.0.0.1:6379/0",
         "KEY must be a redis://, rediss://, unix:// or redis+sentinel:// URL, "
         "not 'http://127.0.0.1:6379/0'"),
        ("redis_url", "http://user:secret@redis.example/0", "'http://user:***@redis.example/0'"),
        ("cors_origins", "app.example.com", "KEY has an invalid origin 'app.example.com'"),
        ("cors_origins", [1], "KEY must be a list of strings, not [1]"),
        ("cors_allow_headers", "X-Token, Bad Name", "KEY has an invalid header name 'Bad Name'"),
        ("subscription_path", 5, "KEY must be a string or None, not 5"),
    ],
)
def test_configuration_values_are_refused_by_name(name: str, given: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^KEY ") as refused:
        convert(CONFIG_OPTIONS[name], given, "KEY")
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("cls", "options", "error", "message"),
    [
        (MemoryOptions, {"max_event_buffer_size": "3"}, TypeError,
         "max_event_buffer_size must be an integer, not '3'"),
        (ManagerOptions, {"max_memory_bytes": 0}, ValueError, "max_memory_bytes must be at"),
        (RedisOptions, {"url": "localhost:6379"}, ValueError, "redis_url must be a redis://"),
        (ManagerOptions, {"max_waiting_subscribers": 0}, ValueError,
         "max_waiting_subscribers must be at least 1"),
        (EndpointOptions, {"subscription_path": "/x", "publish_path": "/x"}, ValueError,
         "must differ"),
        (CORSOptions, {"origins": ("*",), "allow_credentials": True}, ValueError,
         "cors_allow_credentials needs a list of origins"),
        (ServerOptions, {"cors_origins": ("*",), "cors_allow_credentials": True}, ValueError,
         "cors_allow_credentials needs a list of origins"),
        (ServerOptions, {"redis_url": "http://127.0.0.1"}, ValueError, "redis_url"),
        (ServerOptions, {"header_timeout": "30"}, TypeError, "header_timeout"),
    ],
)
def test_options_classes_refuse_by_name(cls: Any, options: dict[str, Any], error: type,
                                        message: str) -> None:
    with pytest.raises(error, match=message):
        cls(**options)


def test_a_list_given_for_a_tuple_becomes_a_tuple() -> None:
    options = ServerOptions(cors_origins=["https://a.example"])  # type: ignore[arg-type]
    assert options.cors_origins == ("https://a.example",)
    assert options.cors_options() == CORSOptions(origins=("https://a.example",))


def test_an_option_of_another_type_cannot_be_defined() -> None:
    @dataclass(frozen=True)
    class Odd:
        mapping: dict[str, int] = option(None, help="no such option")

    with pytest.raises(TypeError, match="an option is an int, float, bool, str"):
        options_of(Odd)


def test_the_manager_refuses_engine_options_beside_an_engine_by_name() -> None:
    engine = MemoryEngine()
    with pytest.raises(ValueError, match=r"engine= excludes .*\(redis_key_prefix\)"):
        LongpollManager(engine=engine, redis_key_prefix="other:")
    with pytest.raises(ValueError, match=r"\(max_categories, persister\)"):
        LongpollManager(engine=engine, max_categories=3, persister=object())  # type: ignore[arg-type]
    # An option at its definition's default is not one given.
    assert LongpollManager(engine=engine, max_event_buffer_size=250).engine is engine


def test_the_manager_builds_its_engine_from_the_options() -> None:
    manager = LongpollManager(7, 3, 60, True, max_categories=5, max_memory_bytes=None)
    engine = manager.engine
    assert isinstance(engine, MemoryEngine)
    assert engine.options == MemoryOptions(
        max_event_buffer_size=3, event_time_to_live_seconds=60,
        delete_event_after_first_retrieval=True, max_categories=5)
    assert (engine.max_buffered_bytes, engine.max_idempotency_key_bytes) == (None, None)
    assert manager.options == ManagerOptions(max_longpoll_timeout_seconds=7,
                                             max_memory_bytes=None)
    # The events and the keys get their shares of the budget.
    budgeted = LongpollManager(max_memory_bytes=8 * 1024 * 1024).engine
    assert isinstance(budgeted, MemoryEngine)
    assert (budgeted.max_buffered_bytes, budgeted.max_idempotency_key_bytes) \
        == (4 * 1024 * 1024, 1024 * 1024)
    with pytest.raises(ValueError, match="redis_url must be a redis://"):
        LongpollManager(redis_url="http://127.0.0.1:6379/0")


README = PACKAGE.parent / "README.md"
TABLE_START = "<!-- options table: tests/test_options.py checks it against the definitions -->"


def _shown(default: Any) -> str:
    """A default as the README shows it."""
    if isinstance(default, tuple):
        return ", ".join(f"`{item}`" for item in default) or "none"
    if isinstance(default, bool) or default is None:
        return f"`{default}`"
    if isinstance(default, str):
        return f'`"{default}"`'
    if isinstance(default, int) and default >= 1024 * 1024 and default % (1024 * 1024) == 0:
        return f"{default // (1024 * 1024)} MiB"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"{default:,}"


def options_table() -> list[str]:
    """The README's table of the options every entry point takes."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for item in CONFIG_OPTIONS.values():
        rows.append(f"| `{item.name}` | {_shown(item.default)} | {item.help} |")
    return rows


def test_the_readme_lists_every_option_with_its_default() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE_START) + 1
    table = lines[start:start + len(options_table())]
    assert table == options_table(), "\n".join(["the README's table should be:",
                                               *options_table()])


def test_a_redis_option_without_redis_url_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="redis_key_prefix needs redis_url"):
        LongpollManager(redis_key_prefix="myapp:")
    LongpollManager(redis_key_prefix=RedisOptions.key_prefix).close()  # the default: fine
