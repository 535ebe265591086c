"""Agent side of ``feature.hostname``: the name the target's own ``hostname`` prints.

That is the nodename of the target's UTS namespace (a pod's name), which the target's
``/etc/hostname`` need not match.  A short-lived thread joins that namespace: a UTS
namespace belongs to a thread, so the agent's other threads and the event loop never see
the change, and the thread dies with it.  Without the permission to join, the target's
``/etc/hostname`` is the answer.
"""

from __future__ import annotations

import ctypes
import os
import threading

from .. import messages_host  # noqa: F401  (registers the messages)
from ..link import Link, RemoteError
from ..protocol import Message

CLONE_NEWUTS = 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)


def target_hostname(pid: int) -> str:
    if pid == os.getpid():
        return os.uname().nodename
    box: dict[str, str] = {}

    def join_and_ask() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if _libc.setns(fd, CLONE_NEWUTS) == 0:
                box["name"] = os.uname().nodename
        finally:
            os.close(fd)

    thread = threading.Thread(target=join_and_ask, name="tether-uts")
    thread.start()
    thread.join()
    if "name" in box:
        return box["name"]
    try:
        with open(f"/proc/{pid}/root/etc/hostname") as f:
            return f.read().strip()
    except OSError as exc:
        raise RemoteError("hostname", f"cannot learn the hostname of process {pid}: "
                          f"{exc.strerror}") from None


async def _hostname(link: Link, msg: Message) -> Message:
    return {"t": "agent_hostname_reply", "hostname": target_hostname(link.state["ctx"].target_pid)}


HANDLERS = {"agent_hostname": _hostname}
