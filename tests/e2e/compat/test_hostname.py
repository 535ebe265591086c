"""feature.hostname: the program asks its hostname and gets the target's.  The incumbent
documents `feature.hostname` as on by default, making the hostname the program sees the
remote pod's (`mirrord/config/src/feature.rs`); the pods here have their own UTS namespace,
named after the pod, while /etc/hostname is this machine's."""

from __future__ import annotations

import socket
import sys

import pytest

ASK = {
    "hostname(1)": ["hostname"],
    "uname -n": ["uname", "-n"],
    "python gethostname": [sys.executable, "-c", "import socket; print(socket.gethostname())"],
    "python uname": [sys.executable, "-c", "import os; print(os.uname().nodename)"],
    "node": ["node", "-e", "console.log(require('os').hostname())"],
}


@pytest.mark.parametrize("how", ASK)
def test_program_sees_the_targets_hostname(tether, pod_factory, how):
    pod = pod_factory("host")
    assert pod.name != socket.gethostname()
    res = tether(pod, ASK[how])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == pod.name


def test_hostname_false_keeps_this_machines(tether, pod_factory):
    pod = pod_factory("host")
    res = tether(pod, ASK["python gethostname"], config={"feature": {"hostname": False}})
    assert res.stdout.strip() == socket.gethostname()


def test_a_short_buffer_gets_enametoolong_as_from_libc(tether, pod_factory, tmp_path):
    """glibc's gethostname fails with ENAMETOOLONG when the name does not fit."""
    import subprocess

    src = tmp_path / "short.c"
    src.write_text('#define _GNU_SOURCE\n#include <errno.h>\n#include <stdio.h>\n#include <string.h>\n'
                   '#include <unistd.h>\nint main(void) { char b[4]; int rc = gethostname(b, 4);'
                   ' printf("%d %s\\n", rc, rc ? strerrorname_np(errno) : "ok"); return 0; }\n')
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(tmp_path / "short"), str(src)], check=True)
    pod = pod_factory("host")
    res = tether(pod, [str(tmp_path / "short")])
    assert res.stdout.split() == ["-1", "ENAMETOOLONG"], res.stderr
