"""feature.hostname: the program asks its hostname and gets the target's.  The incumbent
documents `feature.hostname` as on by default, making the hostname the program sees the
remote pod's (`mirrord/config/src/feature.rs`); the pods here have their own UTS namespace,
named after the pod, while /etc/hostname is this machine's."""

from __future__ import annotations

import shlex
import socket
import sys

ASK = {
    "hostname(1)": ["hostname"],
    "uname -n": ["uname", "-n"],
    "python gethostname": [sys.executable, "-c", "import socket; print(socket.gethostname())"],
    "python uname": [sys.executable, "-c", "import os; print(os.uname().nodename)"],
    "node": ["node", "-e", "console.log(require('os').hostname())"],
}


def test_program_sees_the_targets_hostname(tether, pod_factory):
    """hostname(1), uname -n, Python's gethostname/uname and Node's os.hostname: each a
    child of one shell, so the layer in each process answers."""
    pod = pod_factory("host")
    assert pod.name != socket.gethostname()
    script = "; ".join(shlex.join(argv) for argv in ASK.values())
    res = tether(pod, ["sh", "-c", script])
    assert res.returncode == 0, res.stderr
    assert dict(zip(ASK, res.stdout.split(), strict=True)) == {how: pod.name for how in ASK}


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


def test_the_targets_hostname_resolves(tether, pod_factory):
    """The incumbent's hostname test also resolves the name it got (mirrord issue 3098):
    the name resolves with the target's /etc/hosts, where the pod's own name is."""
    pod = pod_factory("host")
    res = tether(pod, [sys.executable, "-c",
                       "import socket; print(socket.gethostbyname(socket.gethostname()))"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == pod.ip
