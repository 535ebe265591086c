"""The agent's file handlers resolve every path inside the target's root."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from tether.agent import files


@pytest.fixture
def root(tmp_path: Path):
    """A fake target root: /etc/app.conf, an absolute symlink and a ../ escape attempt."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "app.conf").write_text("in-root")
    (tmp_path / "etc" / "link.conf").symlink_to("/etc/app.conf")       # absolute, in root
    (tmp_path / "etc" / "escape").symlink_to("../../../../../../etc")  # tries to leave
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield SimpleNamespace(state={"fs_root_fd": fd}, path=tmp_path)
    os.close(fd)


def call(handler, link, **msg):
    return asyncio.run(handler(link, msg))


def test_open_returns_a_descriptor_of_the_file_in_the_root(root):
    reply = call(files._fs_open, root, t="fs_open", path="/etc/app.conf", flags=os.O_RDONLY,
                 mode=0)
    (fd,) = reply["_fds"]
    try:
        assert os.read(fd, 100) == b"in-root"
    finally:
        os.close(fd)


def test_absolute_symlinks_resolve_inside_the_root(root):
    reply = call(files._fs_open, root, path="/etc/link.conf", flags=os.O_RDONLY, mode=0)
    (fd,) = reply["_fds"]
    with os.fdopen(fd) as f:
        assert f.read() == "in-root"
    real = call(files._fs_realpath, root, path="/etc/link.conf")["path"]
    assert real == "/etc/app.conf"


def test_dotdot_cannot_leave_the_root(root):
    # The host's /etc/os-release exists; inside the fake root it does not.
    with pytest.raises(FileNotFoundError):
        call(files._fs_open, root, path="/etc/escape/os-release", flags=os.O_RDONLY, mode=0)
    with pytest.raises(FileNotFoundError):
        call(files._fs_stat, root, path="/../../etc/os-release", follow=True)


def test_stat_lstat_and_readlink(root):
    st = call(files._fs_stat, root, path="/etc/app.conf", follow=True)["st"]
    assert stat.S_ISREG(st[2]) and st[7] == len("in-root")
    lst = call(files._fs_stat, root, path="/etc/link.conf", follow=False)["st"]
    assert stat.S_ISLNK(lst[2])
    assert call(files._fs_readlink, root, path="/etc/link.conf")["target"] == "/etc/app.conf"


def test_missing_file_is_enoent(root):
    with pytest.raises(OSError) as exc:
        call(files._fs_stat, root, path="/etc/missing", follow=True)
    assert exc.value.errno == errno.ENOENT


def test_relay_reads_and_lists(root):
    assert call(files._fs_read, root, path="/etc/app.conf", offset=3, size=2)["data"] == b"ro"
    entries = sorted(call(files._fs_list, root, path="/etc")["entries"])
    assert entries == [["app.conf", "f", ""], ["escape", "l", "../../../../../../etc"],
                       ["link.conf", "l", "/etc/app.conf"]]
