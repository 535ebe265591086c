"""The steal accept loop's error policy (python/tether/agent/incoming.py).

ENFILE, ENOBUFS and ENOMEM cannot be produced on demand on a shared machine (the file
table is system-wide), so these tests inject accept(2)'s errors into a real listener's
accept loop; EMFILE itself is produced for real in tests/e2e/incoming/test_incoming_faults.py.
The redirect is a recorder: its real behaviour is tests/agent/test_redirect.py's."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest
from tether.agent import incoming
from tether.agent.incoming import IncomingAgent, Subscription


class Recorder:
    """Stands in for the link and the redirect, keeping the order of what happened."""

    can_pass_fds = True

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.events: list[str] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.events.append(f"{msg['t']} {msg.get('port')}")

    def remove(self, port: int) -> None:
        self.events.append(f"redirect removed {port}")

    def add(self, port: int, to_port: int, whole: bool | None = None) -> None:
        self.events.append(f"redirect added {port}")

    def close(self) -> None:
        pass


def run_accept_loop(errors: list[int]) -> tuple[Recorder, bytes]:
    """Run the loop on a listener with one waiting client; accept(2) fails with ``errors``
    in turn, then with EBADF (the listener is gone). Returns what happened and what the
    waiting client received."""

    async def main() -> tuple[Recorder, bytes]:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        agent = IncomingAgent(rec)  # type: ignore[arg-type]
        agent.redirector = rec  # type: ignore[assignment]
        agent.subs[8080] = Subscription(8080, "steal")
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        agent.listener = listener
        client = socket.create_connection(listener.getsockname())
        script = [*errors, errno.EBADF]

        async def failing_accept(sock: socket.socket) -> tuple[socket.socket, Any]:
            raise OSError(script.pop(0), "injected")

        loop.sock_accept = failing_accept  # type: ignore[method-assign]
        await asyncio.wait_for(agent._accept_loop(listener), 5)
        client.settimeout(2)
        try:
            got = client.recv(10)
        except TimeoutError:
            got = b"(still waiting)"
        except ConnectionResetError:
            got = b"(reset)"  # never accepted: the listener closed under it
        client.close()
        agent.close()
        return rec, got

    return asyncio.run(main())


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_exhaustion_sheds_the_newest_connection_and_the_loop_goes_on(err):
    rec, got = run_accept_loop([err, err])
    assert got == b""  # shed: closed at once instead of waiting in the queue
    # The loop survived both, and only the listener's own failure ended it.
    assert rec.events == ["redirect removed 8080", "in_lost 8080"]


def test_errors_of_the_connection_being_accepted_do_not_end_the_loop():
    rec, got = run_accept_loop([errno.ECONNABORTED, errno.EPROTO, errno.EPERM])
    assert got == b"(reset)"  # not shed (nothing ran out): it waited until the listener died
    assert rec.events == ["redirect removed 8080", "in_lost 8080"]


def test_a_listener_that_cannot_go_on_removes_the_redirect_before_anything_else():
    rec, _ = run_accept_loop([])
    assert rec.events == ["redirect removed 8080", "in_lost 8080"]


def test_exhaustion_backs_off_instead_of_spinning(monkeypatch):
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *a: Any) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(incoming.asyncio, "sleep", sleep)
    run_accept_loop([errno.EMFILE] * 8)
    assert slept == sorted(slept) and slept[0] >= incoming.BACKOFF_MIN
    assert max(slept) <= incoming.BACKOFF_MAX and len(slept) == 8
