"""Scene 5: a program under tether reads the target's files (read-only by default),
whatever it is written in, while its own code and the machine's libraries stay local."""

from __future__ import annotations

import json
import os
import sys

import pytest

READERS = {
    "c": lambda probe, path: [probe, "cat", path],
    "python": lambda probe, path: [sys.executable, "-c",
                                   f"print(open({path!r}).read(), end='')"],
    "node": lambda probe, path: ["node", "-e",
                                 f"process.stdout.write(require('fs').readFileSync({path!r}, 'utf8'))"],
}
LISTERS = {
    "c": lambda probe, path: [probe, "ls", path],
    "python": lambda probe, path: [sys.executable, "-c",
                                   f"import os; print('\\n'.join(sorted(os.listdir({path!r}))))"],
    "node": lambda probe, path: ["node", "-e",
                                 f"console.log(require('fs').readdirSync({path!r}).sort().join('\\n'))"],
}
STATS = {
    "c": lambda probe, path: [probe, "stat", path],
    "python": lambda probe, path: [sys.executable, "-c",
                                   f"import os; s = os.stat({path!r}); "
                                   f"print(f'size={{s.st_size}} mode={{s.st_mode:o}}')"],
    "node": lambda probe, path: ["node", "-e",
                                 f"const s = require('fs').statSync({path!r}); "
                                 f"console.log(`size=${{s.size}} mode=${{s.mode.toString(8)}}`)"],
}


@pytest.mark.parametrize("lang", READERS)
def test_program_reads_the_targets_copy_of_a_file(tether, app, fsprobe, lang):
    res = tether(app.pod, READERS[lang](fsprobe, app.conf))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "remote copy\n"


@pytest.mark.parametrize("lang", LISTERS)
def test_directory_listing_is_the_targets(tether, app, fsprobe, lang):
    res = tether(app.pod, LISTERS[lang](fsprobe, str(app.dir)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["app.conf", "secret.txt"]  # secret.txt is not local


@pytest.mark.parametrize("lang", STATS)
def test_stat_answers_as_the_target(tether, app, fsprobe, lang):
    res = tether(app.pod, STATS[lang](fsprobe, app.secret))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "size=1234 mode=100644"


@pytest.mark.parametrize("lang", READERS)
def test_file_missing_on_the_target_is_enoent_not_the_local_copy(tether, app, fsprobe, lang):
    assert os.path.exists(app.local_only)
    res = tether(app.pod, READERS[lang](fsprobe, app.local_only))
    assert res.returncode != 0
    assert "local only" not in res.stdout
    assert "No such file" in res.stderr or "ENOENT" in res.stderr


def test_read_mode_writes_go_to_this_machine_not_the_target(tether, app):
    """mirrord's read mode: an open for writing of a remote path opens the local path
    (its file filter answers `Bypass::ReadOnly`, so libc's own open runs here)."""
    script = f"open({app.conf!r}, 'w').write('written here')"
    res = tether(app.pod, [sys.executable, "-c", script])
    assert res.returncode == 0, res.stderr
    assert open(app.conf).read() == "written here"
    assert (app.pod.root / app.conf.lstrip("/")).read_text() == "remote copy\n"


def test_write_mode_writes_land_on_the_target(tether, app):
    path = str(app.dir / "written.txt")
    res = tether(app.pod, [sys.executable, "-c",
                           f"f = open({path!r}, 'w'); f.write('from the laptop'); f.close()"],
                 config={"feature": {"fs": {"mode": "write"}}})
    assert res.returncode == 0, res.stderr
    assert (app.pod.root / path.lstrip("/")).read_text() == "from the laptop"
    assert not os.path.exists(path)  # not on this machine


def test_local_mode_reads_this_machines_files(tether, app, fsprobe):
    res = tether(app.pod, [fsprobe, "cat", app.conf], config={"feature": {"fs": "local"}})
    assert res.stdout == "local copy\n"


def test_user_local_and_not_found_lists(tether, app, fsprobe):
    config = {"feature": {"fs": {"local": [r"app\.conf$"], "not_found": [r"secret\.txt$"]}}}
    res = tether(app.pod, [fsprobe, "cat", app.conf], config=config)
    assert res.stdout == "local copy\n"
    res = tether(app.pod, [fsprobe, "cat", app.secret], config=config)
    assert res.returncode == 1 and "No such file" in res.stderr


def test_mapping_rewrites_the_remote_path(tether, app, fsprobe):
    config = {"feature": {"fs": {"mapping": {r"^/srv/config/(.*)$": f"{app.dir}/$1"}}}}
    res = tether(app.pod, [fsprobe, "cat", "/srv/config/app.conf"], config=config)
    assert res.stdout == "remote copy\n", res.stderr


@pytest.mark.parametrize("lang", ["python", "node"])
def test_interpreters_start_without_remote_round_trips(tether, app, lang):
    """Hundreds of start-up opens and stats (modules, site-packages, node's own files)
    stay local: the only paths the orchestrator is asked about are the program's, and
    the CA bundle Debian's node loads at start (the target's trust store, on purpose)."""
    res = tether(app.pod, READERS[lang](None, app.conf), env={"TETHER_LOG": "debug"})
    assert res.stdout == "remote copy\n", res.stderr
    asked = [line.split("fs_", 1)[1] for line in res.stderr.splitlines()
             if "tether.files" in line or " fs_" in line]
    asked = [a.split(" ", 1)[1] for a in asked if " " in a]
    assert app.conf in asked
    assert all(p.startswith((str(app.dir), "/etc/ssl/")) for p in asked), asked


def test_relay_without_descriptor_passing_gives_a_readonly_copy(tether, app):
    script = ("import errno, json, os\n"
              f"out = {{'read': open({app.conf!r}).read(), 'list': sorted(os.listdir({str(app.dir)!r})),"
              f" 'size': os.stat({app.secret!r}).st_size}}\n"
              f"try:\n    open({app.conf!r}, 'a')\nexcept OSError as e:\n"
              f"    out['write'] = errno.errorcode[e.errno]\n"
              "print(json.dumps(out))\n")
    # write mode: a write open would go to the target, which the relay cannot do
    res = tether(app.pod, [sys.executable, "-c", script], env={"TETHER_FS_RELAY": "1"},
                 config={"feature": {"fs": "write"}})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"read": "remote copy\n", "list": ["app.conf", "secret.txt"],
                                      "size": 1234, "write": "EROFS"}
    assert res.stderr.count("the target's files cannot be written over this link") == 1
