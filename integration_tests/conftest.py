from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _inner_runs_without_pytest_django(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytest runs a test starts (pytester) load no pytest-django unless they ask (``-p django``).

    Django's settings are process-wide: once a test module has configured them in this
    process, every in-process run's pytest-django would set Django's test environment up
    again, which Django refuses.
    """
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # first: it clears PYTEST_ADDOPTS
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:django")
