"""Fixtures for the Kubernetes target: a stand-in API server and `tether` pointed at it.

``kube`` is the :class:`apiserver.Cluster` (create workloads with ``kube.deploy(...)``,
forbid verbs with ``kube.forbid(...)``); ``kube_tether(argv, config=..)`` runs
``tether exec`` with ``KUBECONFIG`` pointing at the stand-in, exactly as a user's shell
would against a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apiserver import Cluster, StandIn  # noqa: E402
from e2e_support import tether_cmd  # noqa: E402


@pytest.fixture
def kube(pod_factory: Any, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(pod_factory, tmp_path)
    server = StandIn(cluster)
    server.start()
    cluster.kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")  # type: ignore[attr-defined]
    cluster.server = server  # type: ignore[attr-defined]
    try:
        yield cluster
    finally:
        server.stop()
        cluster.close()


@pytest.fixture
def kube_env(kube: Cluster) -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kube.kubeconfig)  # type: ignore[attr-defined]
    return env


@pytest.fixture
def kube_tether(kube_env: dict[str, str], tmp_path: Path
                ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kube_tether(argv, config=None, args=(), timeout=60, cmd="exec") -> CompletedProcess."""

    def run(argv: Sequence[str], *, config: dict[str, Any] | None = None,
            args: Sequence[str] = (), timeout: float = 60, cmd: str = "exec",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = tether_cmd() + [cmd]
        if config is not None:
            cfg = tmp_path / "tether.json"
            cfg.write_text(json.dumps(config))
            full += ["-f", str(cfg)]
        full += list(args)
        if argv:
            full += ["--", *argv]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              env={**kube_env, **(env or {})}, cwd=tmp_path)

    return run
