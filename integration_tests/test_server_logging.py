"""Per-server log capture that leaves the process's logging, and its signal handlers, alone."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn

from apps import hello_app
from uvicorn_testserver import UvicornTestServer

LOGGER_NAMES = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "uvicorn_testserver")


def logging_state() -> dict[str, tuple[Any, ...]]:
    """What a logging configuration sets on the loggers the harness touches."""
    state = {}
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        state[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    return state


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """Restore the loggers' handlers, levels, propagation and filters after the test."""
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    saved = [(list(lg.handlers), lg.level, lg.propagate, lg.disabled, list(lg.filters)) for lg in loggers]
    yield
    for logger, (handlers, level, propagate, disabled, filters) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
        logger.filters[:] = filters


@pytest.fixture
def default_uvicorn_logging(saved_logging: None) -> None:
    """uvicorn's loggers as an unconfigured process has them (another test may have configured them)."""
    for name in LOGGER_NAMES[1:]:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        logger.disabled = False


def access_lines(server: UvicornTestServer) -> list[str]:
    return [line for line in server.log.text.splitlines() if "uvicorn.access" in line]


def test_log_has_uvicorn_error_and_access_lines(default_uvicorn_logging: None) -> None:
    with UvicornTestServer(hello_app, log_level="info") as server:
        assert requests.get(server.url("/?who=me"), timeout=30).text == "hello"
    text = server.log.text
    assert "INFO     uvicorn.error: Application startup complete." in text
    assert "INFO     uvicorn.error: Application shutdown complete." in text
    [line] = access_lines(server)
    assert '"GET /?who=me HTTP/1.1" 200' in line


def test_default_log_level_keeps_warnings_only(default_uvicorn_logging: None) -> None:
    with UvicornTestServer(hello_app, raise_server_exceptions=False) as server:
        requests.get(server.url("/"), timeout=30)
        requests.get(server.url("/fail"), timeout=30)
    assert "Application startup complete." not in server.log.text
    assert access_lines(server) == []
    assert "ERROR    uvicorn.error: Exception in ASGI application" in server.log.text
    assert "ValueError: the handler broke on purpose" in server.log.text


def test_access_log_false_drops_access_lines_of_that_server_only(default_uvicorn_logging: None) -> None:
    with (
        UvicornTestServer(hello_app, log_level="info", access_log=False) as quiet,
        UvicornTestServer(hello_app, log_level="info") as chatty,
    ):
        requests.get(quiet.url("/"), timeout=30)
        requests.get(chatty.url("/"), timeout=30)
    assert access_lines(quiet) == []
    assert "Application startup complete." in quiet.log.text
    assert len(access_lines(chatty)) == 1


def test_concurrent_servers_capture_only_their_own_records(default_uvicorn_logging: None) -> None:
    with (
        UvicornTestServer(hello_app, log_level="info") as first,
        UvicornTestServer(hello_app, log_level="info") as second,
    ):
        for _ in range(3):
            requests.get(first.url("/first-only"), timeout=30)
            requests.get(second.url("/second-only"), timeout=30)
    assert len(access_lines(first)) == 3
    assert len(access_lines(second)) == 3
    assert "/second-only" not in first.log.text
    assert "/first-only" not in second.log.text


def test_records_reach_caplog(default_uvicorn_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), UvicornTestServer(hello_app, log_level="info") as server:
        requests.get(server.url("/via-caplog"), timeout=30)
    messages = {(record.name, record.getMessage()) for record in caplog.records}
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert any(name == "uvicorn.access" and "/via-caplog" in message for name, message in messages)


def test_start_and_stop_leave_the_logging_configuration_unchanged(default_uvicorn_logging: None) -> None:
    before = logging_state()
    with UvicornTestServer(hello_app, log_level="debug") as server:
        requests.get(server.url("/"), timeout=30)
    assert logging_state() == before
    assert access_lines(server)


def test_user_levels_and_handlers_are_restored(saved_logging: None) -> None:
    handler = logging.NullHandler()
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.access").addHandler(handler)
    before = logging_state()
    with UvicornTestServer(hello_app, log_level="info") as server:
        requests.get(server.url("/"), timeout=30)
    assert logging_state() == before
    assert "Application startup complete." in server.log.text


def test_capture_survives_uvicorns_own_logging_config(saved_logging: None) -> None:
    # Any uvicorn.Config made with the default log_config runs logging.config.dictConfig,
    # which replaces the handlers of uvicorn's loggers.
    uvicorn.Config("somewhere:app")
    with UvicornTestServer(hello_app, log_level="info") as server:
        requests.get(server.url("/after-dictconfig"), timeout=30)
    assert "Application startup complete." in server.log.text
    assert any("/after-dictconfig" in line for line in access_lines(server))


def test_signal_handlers_of_the_main_thread_are_untouched() -> None:
    handled = (signal.SIGINT, signal.SIGTERM)
    before = {signum: signal.getsignal(signum) for signum in handled}
    with UvicornTestServer(hello_app) as server:
        assert {signum: signal.getsignal(signum) for signum in handled} == before
        requests.get(server.url("/"), timeout=30)
    assert {signum: signal.getsignal(signum) for signum in handled} == before


def test_access_lines_are_captured_when_the_process_has_no_logging_configured(default_uvicorn_logging: None) -> None:
    # uvicorn writes access lines only if `uvicorn.access` has a handler somewhere up its tree.
    logging.getLogger().handlers[:] = []
    before = logging_state()
    with UvicornTestServer(hello_app, log_level="info") as server:
        requests.get(server.url("/unconfigured"), timeout=30)
    assert any("/unconfigured" in line for line in access_lines(server))
    assert logging_state() == before
