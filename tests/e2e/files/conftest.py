"""Fixtures for the remote-files scenes: a pod whose files differ from this machine's."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

FSPROBE = r"""
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    if (!strcmp(argv[1], "cat")) {
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror("fopen"); return 1; }
        char buf[4096]; size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        return fclose(f) != 0;
    }
    if (!strcmp(argv[1], "ls")) {
        DIR *d = opendir(argv[2]);
        if (!d) { perror("opendir"); return 1; }
        struct dirent *e;
        while ((e = readdir(d))) if (e->d_name[0] != '.') printf("%s\n", e->d_name);
        return closedir(d) != 0;
    }
    if (!strcmp(argv[1], "stat")) {
        struct stat st;
        if (stat(argv[2], &st)) { perror("stat"); return 1; }
        printf("size=%lld mode=%o\n", (long long)st.st_size, (unsigned)st.st_mode);
        return 0;
    }
    return 2;
}
"""


@pytest.fixture(scope="session")
def fsprobe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("fsprobe")
    (out / "fsprobe.c").write_text(FSPROBE)
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(out / "fsprobe"), str(out / "fsprobe.c")],
                   check=True)
    return str(out / "fsprobe")


@pytest.fixture
def app(pod_factory):
    """A pod whose /etc/tether-test-*/ has the pod's app.conf and secret.txt, where this
    machine has another app.conf; and an empty /etc/tether-empty-*/ in the pod where this
    machine has local-only.conf (a tmpfs mounted in the pod's mount namespace)."""
    tag = secrets.token_hex(3)
    conf_dir = Path(f"/etc/tether-test-{tag}")
    empty_dir = Path(f"/etc/tether-empty-{tag}")
    conf_dir.mkdir()
    empty_dir.mkdir()
    try:
        (conf_dir / "app.conf").write_text("local copy\n")
        (empty_dir / "local-only.conf").write_text("local only\n")
        pod = pod_factory("files", files={
            str(conf_dir / "app.conf"): "remote copy\n",
            str(conf_dir / "secret.txt"): "s" * 1234,
        }, cmd=["sh", "-c", f"mount -t tmpfs none {empty_dir} && touch /run/tether-ready-{tag}"
                            f" && exec sleep infinity"])
        ready = pod.root / f"run/tether-ready-{tag}"
        deadline = time.monotonic() + 5
        while not ready.exists():
            assert time.monotonic() < deadline, "the pod did not mount its tmpfs"
            time.sleep(0.02)
        yield SimpleNamespace(pod=pod, dir=conf_dir, conf=str(conf_dir / "app.conf"),
                              secret=str(conf_dir / "secret.txt"), empty=empty_dir,
                              local_only=str(empty_dir / "local-only.conf"))
    finally:
        shutil.rmtree(conf_dir, ignore_errors=True)
        shutil.rmtree(empty_dir, ignore_errors=True)
