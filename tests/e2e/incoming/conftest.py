"""Fixtures for the incoming scenes: a target pod serving "This is a silly demo" on 8080,
and `tether exec` sessions running a local server in the background."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incoming_support import PORT, SILLY, TARGET_ANSWER, Session  # noqa: E402


@pytest.fixture
def target(pod_factory: Any) -> Any:
    pod = pod_factory("silly", cmd=[sys.executable, SILLY, str(PORT), TARGET_ANSWER.strip()])
    pod.wait_port(PORT)
    return pod


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Any]:
    """session(pod, incoming_config, argv=None) -> a ready Session (stopped at teardown)."""
    started: list[Session] = []

    def start(pod: Any, incoming: dict[str, Any], argv: list[str] | None = None,
              ready: bool = True, env: dict[str, str] | None = None) -> Session:
        s = Session(pod, incoming, tmp_path, argv, env)
        started.append(s)
        return s.wait_ready() if ready else s

    yield start
    for s in started:
        s.stop()


