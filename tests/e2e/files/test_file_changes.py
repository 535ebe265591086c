"""Path calls that change or describe the file system (mkdir, rmdir, unlink, rename, statfs)
act where the file is: in the target in `write` mode, on this machine in `read` mode, as the
incumbent (mirrord) does.  The expectations come from mirrord's file filter
(`mirrord/layer/src/file/filter.rs`): in write mode a remote path is served by the agent, in
read mode a write-type call on a remote path "bypasses" to the local file system."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

WRITE = {"feature": {"fs": {"mode": "write"}}}

PY_CHANGES = r"""
import errno, json, os, sys
d = sys.argv[1]
out = {}
def attempt(name, fn, *args):
    try:
        fn(*args)
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
attempt("mkdir", os.mkdir, d + "/made")
attempt("mkdir_again", os.mkdir, d + "/made")
attempt("rename", os.rename, d + "/app.conf", d + "/made/moved.conf")
attempt("unlink_secret", os.unlink, d + "/secret.txt")
attempt("unlink_missing", os.unlink, d + "/nope")
attempt("rmdir_full", os.rmdir, d + "/made")
attempt("unlink_dir", os.remove, d + "/made")
out["listing"] = sorted(os.listdir(d))
print(json.dumps(out))
"""


def test_write_mode_changes_land_in_the_target_with_its_errnos(tether, app):
    """mirrord's write mode serves mkdir/rename/unlink/rmdir of a remote path in the pod,
    so the errors are the pod's: EEXIST, ENOENT, ENOTEMPTY, EISDIR.  secret.txt exists only in
    the pod and app.conf is renamed there while this machine's copy stays."""
    res = tether(app.pod, [sys.executable, "-c", PY_CHANGES, str(app.dir)], config=WRITE)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "mkdir": "ok", "mkdir_again": "EEXIST", "rename": "ok", "unlink_secret": "ok",
        "unlink_missing": "ENOENT", "rmdir_full": "ENOTEMPTY", "unlink_dir": "EISDIR",
        "listing": ["made"]}
    pod_dir = app.pod.root / str(app.dir).lstrip("/")
    assert (pod_dir / "made" / "moved.conf").read_text() == "remote copy\n"
    assert not (pod_dir / "secret.txt").exists()
    assert sorted(os.listdir(app.dir)) == ["app.conf"]  # this machine is untouched


C_CHANGES = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
static void say(const char *what, int rc) { printf("%s=%s\n", what, rc ? strerrorname_np(errno) : "ok"); }
int main(int argc, char **argv) {
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/d1", argv[1]);
    say("mkdirat", mkdirat(AT_FDCWD, a, 0750));
    snprintf(b, sizeof b, "%s/app.conf", argv[1]);
    snprintf(a, sizeof a, "%s/secret.txt", argv[1]);
    say("renameat2_noreplace", renameat2(AT_FDCWD, b, AT_FDCWD, a, RENAME_NOREPLACE));
    snprintf(a, sizeof a, "%s/d1", argv[1]);
    say("unlinkat_removedir", unlinkat(AT_FDCWD, a, AT_REMOVEDIR));
    snprintf(b, sizeof b, "%s/app.conf", argv[1]);
    say("rename_to_local", rename(b, "/tmp/tether-not-there"));
    say("remove", remove(b));
    say("remove_again", remove(b));
    return 0;
}
"""


def test_c_at_calls_and_renameat2_flags_act_in_the_target(tether, app, tmp_path):
    """mkdirat/unlinkat(AT_REMOVEDIR)/renameat2(RENAME_NOREPLACE) are served in the pod with
    the pod's answer; a rename between a remote and a local path fails with EXDEV, what
    the kernel answers between two file systems (so `mv` copies instead).  glibc's remove()
    unlinks through its internal calls, so it is served too."""
    src = tmp_path / "changes.c"
    src.write_text(C_CHANGES)
    exe = tmp_path / "changes"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(src)], check=True)
    res = tether(app.pod, [str(exe), str(app.dir)], config=WRITE)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["mkdirat=ok", "renameat2_noreplace=EEXIST",
                                  "unlinkat_removedir=ok", "rename_to_local=EXDEV",
                                  "remove=ok", "remove_again=ENOENT"]
    assert not (app.pod.root / str(app.dir).lstrip("/") / "d1").exists()
    assert not (app.pod.root / app.conf.lstrip("/")).exists()  # glibc's remove() too
    assert os.path.exists(app.conf)


def test_node_copyfile_creates_the_copy_in_the_target(tether, app):
    """libuv's copyfile creates the destination with the source's whole st_mode (file-type
    bits included); open(2) ignores those bits, so the copy must succeed in the pod.  Node's
    mkdir/rename/unlink/rmdir go to the pod as well."""
    d = str(app.dir)
    script = (f"const fs = require('fs');"
              f"fs.copyFileSync({d + '/secret.txt'!r}, {d + '/copy.txt'!r});"
              f"fs.mkdirSync({d + '/n'!r}); fs.renameSync({d + '/copy.txt'!r}, {d + '/n/c.txt'!r});"
              f"fs.unlinkSync({d + '/app.conf'!r});"
              f"let code = ''; try {{ fs.rmdirSync({d + '/n'!r}); }} catch (e) {{ code = e.code; }}"
              f"console.log(JSON.stringify([fs.readdirSync({d!r}).sort(), code]));")
    res = tether(app.pod, ["node", "-e", script], config=WRITE)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [["n", "secret.txt"], "ENOTEMPTY"]
    pod_dir = app.pod.root / d.lstrip("/")
    assert (pod_dir / "n" / "c.txt").read_text() == "s" * 1234
    assert os.path.exists(app.conf)  # the local copy was not the one unlinked


def test_read_mode_write_calls_act_on_this_machine(tether, app):
    """mirrord's read mode sends write-type calls on remote paths to the local file system
    (`Bypass::ReadOnly`): its read-only test expects FileNotFoundError when opening for
    writing a path that does not exist locally, and the pod is never written."""
    tag = secrets.token_hex(3)
    nowhere = f"/etc/tether-nowhere-{tag}/new.txt"
    script = (
        "import errno, json, os, sys\nout = {}\n"
        f"try:\n    open({nowhere!r}, 'w')\nexcept OSError as e:\n"
        "    out['open_w'] = errno.errorcode[e.errno]\n"
        f"os.mkdir({str(app.dir / 'made-here')!r})\n"
        f"with open({str(app.dir / 'made-here' / 'f')!r}, 'w') as f:\n    f.write('x')\n"
        f"os.rename({str(app.dir / 'made-here' / 'f')!r}, {str(app.dir / 'made-here' / 'g')!r})\n"
        f"out['local'] = sorted(os.listdir({str(app.dir / 'made-here')!r}))\n"
        f"try:\n    os.unlink({app.secret!r})\nexcept OSError as e:\n"
        "    out['unlink_pod_only'] = errno.errorcode[e.errno]\n"
        "print(json.dumps(out))\n")
    res = tether(app.pod, [sys.executable, "-c", script])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"open_w": "ENOENT", "local": ["g"],
                                      "unlink_pod_only": "ENOENT"}
    assert (app.dir / "made-here" / "g").read_text() == "x"
    assert (app.pod.root / app.secret.lstrip("/")).exists()  # the pod's file stays


@pytest.mark.parametrize("mode", ["read", "write"])
def test_statfs_describes_the_targets_file_system(tether, app, mode):
    """statfs/statvfs of a remote path describe the pod's mount (here a tmpfs the pod
    mounted where this machine has an ordinary directory); Node's fs.statfsSync too."""
    pod_view = os.statvfs(app.pod.root / str(app.empty).lstrip("/"))
    local_view = os.statvfs(app.empty)
    assert (pod_view.f_blocks, pod_view.f_files) != (local_view.f_blocks, local_view.f_files)
    py = (f"import os; s = os.statvfs({str(app.empty)!r}); print(s.f_blocks, s.f_files)\n"
          f"s = os.fstatvfs(os.open({str(app.empty)!r}, os.O_RDONLY)); print(s.f_blocks)")
    res = tether(app.pod, [sys.executable, "-c", py], config={"feature": {"fs": mode}})
    assert res.returncode == 0, res.stderr
    # fstatvfs of the remote descriptor is native: the descriptor is the pod's
    assert res.stdout.split() == [str(pod_view.f_blocks), str(pod_view.f_files),
                                  str(pod_view.f_blocks)]
    js = f"console.log(require('fs').statfsSync({str(app.empty)!r}).type.toString(16))"
    res = tether(app.pod, ["node", "-e", js], config={"feature": {"fs": mode}})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1021994"  # TMPFS_MAGIC


def test_fs_mode_flag_overrides_the_config_file(tether, app, fsprobe):
    """`mirrord exec --fs-mode` sets the file mode whatever the config file says."""
    res = tether(app.pod, [fsprobe, "cat", app.conf], config=WRITE, args=["--fs-mode", "local"])
    assert res.stdout == "local copy\n", res.stderr
    res = tether(app.pod, [fsprobe, "cat", app.conf], config={"feature": {"fs": "local"}},
                 args=["--fs-mode", "read"])
    assert res.stdout == "remote copy\n", res.stderr


UNLINK_SCENE = r"""
import json, os, sys
d, src = sys.argv[1], sys.argv[2]
out = {}
# unlink of a remote file that is still open, then unlinkat through a remote directory fd
os.makedirs(d + "/remote_test/test_unlink", exist_ok=True)
path = d + "/remote_test/test_unlink/f"
open(path, "w").write("x")
held = open(path)
os.unlink(path)
held.close()
out["unlinked"] = not os.path.isfile(path)
open(path, "w").write("y")
dir_fd = os.open(d + "/remote_test/test_unlink", os.O_RDONLY | os.O_DIRECTORY)
os.unlink("f", dir_fd=dir_fd)
os.close(dir_fd)
out["unlinkat"] = not os.path.isfile(path)
# an opened directory keeps its identity when its old name is reused
os.makedirs(d + "/original")
open(d + "/original/victim", "w").write("old")
dir_fd = os.open(d + "/original", os.O_RDONLY | os.O_DIRECTORY)
os.rename(d + "/original", d + "/moved")
os.mkdir(d + "/original")
open(d + "/original/victim", "w").write("replacement")
os.unlink("victim", dir_fd=dir_fd)
out["identity"] = [os.path.exists(d + "/moved/victim"), open(d + "/original/victim").read()]
# a mapped path: created and removed where the mapping points
os.makedirs(src + "/test_unlink", exist_ok=True)
out["mapped_dir"] = os.path.isdir(d + "/sink/test_unlink")
open(src + "/test_unlink/g", "w").write("z")
os.unlink(src + "/test_unlink/g")
out["mapped_unlink"] = not os.path.exists(d + "/sink/test_unlink/g")
print(json.dumps(out))
"""


def test_the_incumbents_unlink_scenes_on_read_write_paths(tether, app):
    """mirrord's own `files_unlink.py` scenes, in read mode with the paths made
    `read_write` (mirrord's filter checks read_write first): unlink of an open file,
    unlinkat through a directory descriptor, a directory's identity kept when its name is
    reused, and unlink on a `mapping`ed path."""
    d = str(app.dir)
    src = f"/srv/tether-src-{app.dir.name}"
    config = {"feature": {"fs": {"read_write": [f"^{d}", f"^{src}"],
                                 "mapping": {f"^{src}": f"{d}/sink"}}}}
    res = tether(app.pod, [sys.executable, "-c", UNLINK_SCENE, d, src], config=config)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"unlinked": True, "unlinkat": True,
                                      "identity": [False, "replacement"], "mapped_dir": True,
                                      "mapped_unlink": True}
    pod_dir = app.pod.root / d.lstrip("/")
    assert sorted(os.listdir(pod_dir)) == ["app.conf", "moved", "original", "remote_test",
                                           "secret.txt", "sink"]
    assert sorted(os.listdir(app.dir)) == ["app.conf"]  # none of it on this machine
    assert not os.path.exists(src)
