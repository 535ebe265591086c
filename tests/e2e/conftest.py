"""End-to-end fixtures: run `tether exec` against pods, and build the test programs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e_support import tether_cmd

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"


@pytest.fixture
def tether(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """tether(target_pod, argv, config=None, env=None, timeout=60) -> CompletedProcess."""

    def run(pod: Any, argv: Sequence[str], *, config: dict[str, Any] | None = None,
            env: dict[str, str] | None = None, timeout: float = 60,
            args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        cmd = tether_cmd() + ["exec"]
        if pod is not None:
            cmd += ["-t", f"process/{pod.pid}"]
        if config is not None:
            cfg = tmp_path / "tether.json"
            cfg.write_text(json.dumps(config))
            cmd += ["-f", str(cfg)]
        cmd += [*args, "--", *argv]
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=tmp_path)

    return run


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Command lines of the test programs, by language (C and Go are compiled once)."""
    out = tmp_path_factory.mktemp("programs")
    built: dict[str, list[str]] = {}
    for name in ("printenv", "fdhostile", "forker"):
        exe = out / name
        subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(PROGRAMS / f"{name}.c")],
                       check=True)
        built[f"{name}.c"] = [str(exe)]
    go_exe = out / "printenv-go"
    subprocess.run(["go", "build", "-o", str(go_exe), str(PROGRAMS / "printenv.go")], check=True,
                   env={**os.environ, "GOCACHE": str(out / "gocache"), "GO111MODULE": "off",
                        "HOME": str(out)}, capture_output=True)
    built["printenv.go"] = [str(go_exe)]
    built["printenv.py"] = [sys.executable, str(PROGRAMS / "printenv.py")]
    built["printenv.js"] = ["node", str(PROGRAMS / "printenv.js")]
    built["printenv.sh"] = ["sh", "-c", 'for n in "$@"; do eval "echo $n=\\${$n-<unset>}"; done',
                            "sh"]
    return built
