"""Shared fixtures; the helpers themselves live in ``support.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from pgsupport import pg, pg_server  # noqa: F401 - PostgreSQL fixtures (tests/pgsupport.py)
from support import Proc


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context of the test's own, destroyed (linger 0) after it."""
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture(autouse=True)
def _own_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents that set no [spool] dir spool under $STATE_DIRECTORY: one per test, never ~.
    And the processes a test starts are not systemd services (no $INVOCATION_ID, even when
    the suite itself runs in one), so collectors keep no default PostgreSQL spool there."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("INVOCATION_ID", raising=False)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real sensorwire processes: ``procs("proxy", "proxy", "-c", path)``."""
    started: list[Proc] = []

    def start(name: str, *argv: str, **kw: Any) -> Proc:
        p = Proc(name, list(argv), tmp_path, **kw)
        started.append(p)
        return p

    start.started = started  # type: ignore[attr-defined]
    yield start
    for p in reversed(started):
        p.close()

