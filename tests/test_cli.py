"""The command line as a user meets it: --help, --version, verify-config."""

import json
import subprocess
from pathlib import Path

import pytest
import tether
from e2e_support import tether_cmd

CONFIGS = Path(__file__).resolve().parent / "configs"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd() + list(args), capture_output=True, text=True,
                          timeout=30, cwd=cwd)


def test_version():
    res = run("--version")
    assert res.returncode == 0 and tether.__version__ in res.stdout


@pytest.mark.parametrize("command", [[], ["exec"], ["verify-config"], ["demo"]])
def test_help_is_enough_to_start(command):
    res = run(*command, "--help")
    assert res.returncode == 0
    assert "Usage:" in res.stdout
    if command == ["exec"]:
        assert "--config-file" in res.stdout and "process/<pid>" in res.stdout
        for flag in ("--steal", "--fs-mode", "-s, --override-env-vars-include",
                     "-x, --override-env-vars-exclude", "--env-file", "--no-outgoing",
                     "--no-udp-outgoing", "--no-remote-dns", "-p, --port-mapping",
                     "-a, --agent-namespace", "-i, --agent-image", "-e, --ephemeral-container",
                     "-c, --accept-invalid-certificates"):
            assert flag in res.stdout
    if command == []:  # every feature has landed: the overview says what it does
        assert "as features land" not in res.stdout
        assert "incoming traffic" in res.stdout and "files" in res.stdout


@pytest.mark.parametrize("name", ["mirror.json", "steal.json", "filter.json"])
def test_the_seeds_config_files_are_valid_as_they_are(name):
    res = run("verify-config", str(CONFIGS / name))
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout


def test_every_problem_is_named_by_its_json_path(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "target": {"path": "deployment/silly-demo"},
        "feature": {"network": {"incomng": "steal",
                                "outgoing": {"filter": {"remote": ["tcp://:notaport"]}}}},
        "agent": {"ttl": "abc"},
    }))
    res = run("verify-config", str(bad))
    assert res.returncode == 1
    assert "feature.network.incomng: unknown key (did you mean 'incoming'?)" in res.stderr
    assert "agent.ttl" in res.stderr
    assert "feature.network.outgoing.filter.remote" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_mode_and_bad_regex_are_both_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "stael", "http_filter": {"path_filter": "(unclosed"}}}}}))
    res = run("verify-config", str(bad))
    assert res.returncode == 1
    assert "feature.network.incoming.mode: 'stael' is not one of mirror, steal, off" in res.stderr
    assert "feature.network.incoming.http_filter.path_filter" in res.stderr


def test_exec_reads_the_default_config_file(tmp_path):
    (tmp_path / ".tether").mkdir()
    (tmp_path / ".tether" / "tether.json").write_text('{"target": "process/999999"}')
    res = run("exec", "--", "true", cwd=tmp_path)
    assert res.returncode != 0
    assert "process/999999: no such process" in res.stderr


def test_exec_without_a_target_says_how_to_give_one(tmp_path):
    res = run("exec", "--", "true", cwd=tmp_path)
    assert res.returncode != 0
    assert "--target process/<pid>" in res.stderr


def test_keys_tether_does_not_act_on_are_named_by_verify_config_and_at_start(tmp_path):
    """No key stays silently valid: one line names them, in verify-config and when a
    session starts."""
    res = run("verify-config", str(CONFIGS / "everything.json"))
    assert res.returncode == 0
    assert "valid (1 warning)" in res.stdout
    line = ("accepted, not used by tether: operator, telemetry, feature.copy_target, "
            "agent.flush_connections, agent.metrics, agent.log_level, "
            "agent.communication_timeout")
    assert line in res.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text('{"target": "process/999999", "operator": true}')
    res = run("exec", "-f", str(cfg), "--", "true")
    assert "tether: config: accepted, not used by tether: operator" in res.stderr
    assert "process/999999: no such process" in res.stderr
