"""Several processes on an in-memory engine: the refusal, its escape hatch, and the
registry of live managers the gunicorn worker checks (the worker itself: in
test_gunicorn_worker.py)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

from wsgi_longpoll import LongpollManager, multiprocess
from wsgi_longpoll.errors import LongpollError, MemoryEngineInSeveralProcesses
from wsgi_longpoll.manager import live_managers


class SharedEngineManager(LongpollManager):
    """A manager whose engine is not in this process's memory (as Redis's is not)."""

    def __init__(self) -> None:
        super().__init__(30)
        self.engine = object()  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def undeclared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts in a process declared one of nothing, without the variable."""
    monkeypatch.setattr(multiprocess, "_declared", None)
    monkeypatch.delenv(multiprocess.ALLOW_VARIABLE, raising=False)
    yield


def test_an_in_memory_manager_is_refused_with_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    extra = logging.getLogger("test.server.error")
    with caplog.at_level(logging.ERROR):
        message = multiprocess.refusal([LongpollManager(30)], "gunicorn -w 4", extra)
    assert message is not None
    assert message.startswith("gunicorn -w 4 runs several processes")
    for advice in ("redis_url=", "LONGPOLL_REDIS_URL", "LONGPOLL['REDIS_URL']", "-w 1",
                   "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1"):
        assert advice in message, advice
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("wsgi_longpoll.multiprocess", logging.ERROR), ("test.server.error", logging.ERROR)]
    assert caplog.records[0].getMessage() == message


def test_each_manager_is_logged_about_once(caplog: pytest.LogCaptureFixture) -> None:
    manager = LongpollManager(30)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.multiprocess"):
        answers = [multiprocess.refusal([manager], "x") for _ in range(3)]
    assert len(set(answers)) == 1 and answers[0] is not None  # refused every time
    assert len(caplog.records) == 1


def test_the_variable_turns_the_refusal_into_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(multiprocess.ALLOW_VARIABLE, "1")
    manager = LongpollManager(30)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.multiprocess"):
        assert multiprocess.refusal([manager], "gunicorn -w 2") is None
        assert multiprocess.refusal([manager], "gunicorn -w 2") is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS is set" in caplog.text


@pytest.mark.parametrize(("value", "allowed"), [
    ("1", True), ("true", True), ("Yes", True), (" on ", True),
    ("", False), ("0", False), ("false", False), ("no", False),
])
def test_allowed_reads_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, allowed: bool
) -> None:
    monkeypatch.setenv(multiprocess.ALLOW_VARIABLE, value)
    assert multiprocess.allowed() is allowed


def test_a_shared_engine_is_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="wsgi_longpoll.multiprocess"):
        assert multiprocess.refusal([SharedEngineManager()], "gunicorn -w 4") is None
    assert not caplog.records


def test_a_manager_built_later_is_checked_only_in_a_declared_process() -> None:
    multiprocess.check_new_manager(LongpollManager(30))  # one process: nothing to say
    multiprocess.declare_several_processes("gunicorn -w 3")
    assert multiprocess.several_processes() == "gunicorn -w 3"
    multiprocess.check_new_manager(SharedEngineManager())
    with pytest.raises(MemoryEngineInSeveralProcesses, match="^gunicorn -w 3 runs") as caught:
        multiprocess.check_new_manager(LongpollManager(30))
    assert isinstance(caught.value, LongpollError) and isinstance(caught.value, RuntimeError)


def test_live_managers_are_those_not_closed_nor_collected() -> None:
    kept, closed = LongpollManager(30), LongpollManager(30)
    collected = LongpollManager(30)
    collected_id = id(collected)
    closed.close()
    del collected
    gc.collect()
    found = live_managers()
    assert kept in found
    assert closed not in found
    assert collected_id not in {id(manager) for manager in found}
