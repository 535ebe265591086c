"""`mirrord exec`'s flags on `tether exec`: each means what it means in the incumbent
(`mirrord/cli/src/config.rs`, `ExecParams` and `AgentParams`), and a flag overrides the
config file, as mirrord's flags (turned into MIRRORD_* variables) override its file."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tether import cli_flags
from tether.config import load_config

FILE = {
    "target": "process/1",
    "feature": {
        "env": {"include": "FROM_FILE", "exclude": "NOTHING"},
        "fs": {"mode": "write", "read_only": ["^/srv/ro"]},
        "network": {"incoming": {"mode": "mirror", "ignore_ports": [9999]},
                    "outgoing": True, "dns": {"enabled": True}},
    },
    "agent": {"namespace": "from-file", "ephemeral": False},
}


@click.command()
@cli_flags.exec_options
def _probe(**flags):
    click.echo(json.dumps(cli_flags.overrides(cli_flags.pop_flags(flags))))


def parse(tmp_path: Path, *argv: str):
    res = CliRunner().invoke(_probe, list(argv))
    assert res.exit_code == 0, res.output
    path = tmp_path / "file.json"
    path.write_text(json.dumps(FILE))
    return load_config(str(path), json.loads(res.output)).config


def test_no_flag_changes_nothing(tmp_path):
    cfg = parse(tmp_path)
    assert cfg.feature.env.include == ("FROM_FILE",)
    assert cfg.feature.fs.mode == "write" and cfg.agent.namespace == "from-file"


def test_each_flag_overrides_its_key_and_leaves_the_rest_of_the_file(tmp_path):
    cfg = parse(tmp_path, "--steal", "--fs-mode", "read", "-s", "A_*;B", "-x", "SECRET",
                "--env-file", "x.env", "--no-udp-outgoing", "--no-remote-dns",
                "-p", "8080:80", "-p", "9090:90", "-a", "agents", "-i", "img:1",
                "--agent-ttl", "5", "--agent-startup-timeout", "9", "-e", "-c",
                "--context", "kind", "--skip-processes", "bash;make")
    f = cfg.feature
    assert f.network.incoming.mode == "steal"
    assert f.network.incoming.ignore_ports == (9999,)  # the file's other keys stay
    assert f.network.incoming.port_mapping == ((8080, 80), (9090, 90))
    assert f.fs.mode == "read" and f.fs.read_only == ("^/srv/ro",)
    assert f.env.include == ("A_*", "B") and f.env.exclude == ("SECRET",)
    assert f.env.env_file == "x.env"
    assert (f.network.outgoing.tcp, f.network.outgoing.udp) == (True, False)
    assert f.network.dns.enabled is False
    assert cfg.agent.namespace == "agents" and cfg.agent.image == "img:1"
    assert (cfg.agent.ttl, cfg.agent.startup_timeout, cfg.agent.ephemeral) == (5, 9, True)
    assert cfg.accept_invalid_certificates is True and cfg.kube_context == "kind"
    assert cfg.skip_processes == ("bash", "make")


def test_no_outgoing_turns_off_both_protocols_over_a_boolean_section(tmp_path):
    cfg = parse(tmp_path, "--no-outgoing")
    assert (cfg.feature.network.outgoing.tcp, cfg.feature.network.outgoing.udp) == (False, False)


@pytest.mark.parametrize("bad", ["8080", "0:80", "a:b", "1:2:3"])
def test_a_bad_port_mapping_is_one_line_naming_it(bad):
    res = CliRunner().invoke(_probe, ["-p", bad])
    assert res.exit_code == 2
    assert f"'{bad}': expected LOCAL:REMOTE" in res.output


def test_dash_e_with_an_env_file_says_what_e_means(tmp_path):
    """In mirrord, `-e` is `--ephemeral-container` and env files are `--env-file`: a file
    given after `-e` would otherwise be run as the program."""
    import subprocess

    from e2e_support import tether_cmd

    (tmp_path / "dev.env").write_text("A=1\n")
    res = subprocess.run(tether_cmd() + ["exec", "-t", "process/1", "-e", "dev.env", "--",
                                         "true"], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path)
    assert res.returncode == 2
    assert "-e is --ephemeral-container" in res.stderr and "--env-file dev.env" in res.stderr
