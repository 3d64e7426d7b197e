"""Fixtures of the alerting tests: a webhook receiver, an in-process collector."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alerting_support import Hook, Live


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on loopback; script its answers with ``hook.script``."""
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[..., Live]]:
    """Start in-process collectors with alert rules: ``live(alerts_toml)``."""
    started: list[Live] = []

    def start(alerts: str, **kw: Any) -> Live:
        c = Live(tmp_path, alerts, **kw)
        started.append(c)
        return c

    yield start
    for c in reversed(started):
        c.close()
