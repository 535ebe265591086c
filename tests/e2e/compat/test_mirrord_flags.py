"""A mirrord user's `mirrord exec` command line works on `tether exec` with the same
meaning: the incumbent turns each flag into the config value it names and lets it win over
the config file (`mirrord/cli/src/config.rs`, `ExecParams::as_env_vars`)."""

from __future__ import annotations

import sys

POD_ENV = {"DB_USER": "app", "DB_PASSWORD": "s3cr3t", "REGION": "eu", "OTHER": "o"}
SHOW = [sys.executable, "-c",
        "import os; print(' '.join(f'{k}={os.environ.get(k, \"-\")}' "
        "for k in ('DB_USER', 'DB_PASSWORD', 'REGION', 'OTHER', 'FROM_DOTENV')))"]


def test_env_flags_override_the_config_file(tether, pod_factory, tmp_path):
    """-s/-x replace the file's include/exclude (';'-separated, as mirrord reads them) and
    --env-file's variables win over the target's."""
    pod = pod_factory("flags", env=POD_ENV)
    (tmp_path / "dev.env").write_text("FROM_DOTENV=yes\nREGION=local\n")
    config = {"feature": {"env": {"include": "OTHER"}}}
    res = tether(pod, SHOW, config=config)
    assert res.stdout.split() == ["DB_USER=-", "DB_PASSWORD=-", "REGION=-", "OTHER=o",
                                  "FROM_DOTENV=-"], res.stderr
    res = tether(pod, SHOW, config=config,
                 args=["-s", "DB_*;REGION", "-x", "DB_PASSWORD", "--env-file", "dev.env"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["DB_USER=app", "DB_PASSWORD=-", "REGION=local", "OTHER=-",
                                  "FROM_DOTENV=yes"]


def test_no_remote_dns_and_no_outgoing_keep_the_program_on_this_machine(tether, pod_factory):
    """--no-remote-dns resolves here (the pod's /etc/hosts name is unknown locally);
    --no-outgoing connects from here (the pod's loopback server is not reachable)."""
    pod = pod_factory("flags", hosts={"only-in-pod.test": "198.18.0.99"})
    lookup = [sys.executable, "-c",
              "import socket\ntry:\n    print(socket.gethostbyname('only-in-pod.test'))\n"
              "except OSError:\n    print('unresolved')"]
    assert tether(pod, lookup).stdout.strip() == "198.18.0.99"
    assert tether(pod, lookup, args=["--no-remote-dns"]).stdout.strip() == "unresolved"
    # a UDP "connect" picks the source address of the route: the pod's vs this machine's
    probe = [sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
             f"s.connect(({pod.gateway!r}, 9)); print(s.getsockname()[0])"]
    assert tether(pod, probe).stdout.strip() == pod.ip
    res = tether(pod, probe, args=["--no-udp-outgoing"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() != pod.ip
