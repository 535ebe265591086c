"""Shared pytest fixtures: test pods (network namespaces standing in for Kubernetes pods).

``pod_factory(name_hint, env=, files=, hosts=, cmd=, behind=, dns=)`` creates pods that are
torn down after the test, whatever its outcome; ``pod`` is one default pod. At session
start, pods left behind by crashed runs are removed (see ``harness.pods.cleanup_stale``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ itself is on sys.path (pytest's rootdir conftest); the package is not installed.
from harness.pods import Pod, PodFactory, ensure_host_setup

PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


@pytest.fixture(scope="session", autouse=True)
def _pod_safety_net() -> None:
    """At session start: blackhole the test range, remove pods of crashed earlier runs.

    Only as root; unit tests that need no pods still run as any user (and pod_factory
    then says why it cannot work).
    """
    if os.geteuid() == 0:
        ensure_host_setup()


@pytest.fixture
def pod_factory(_pod_safety_net: None) -> Iterator[PodFactory]:
    with PodFactory() as factory:
        yield factory


@pytest.fixture
def pod(pod_factory: PodFactory) -> Pod:
    return pod_factory("pod")
