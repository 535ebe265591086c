"""Reach the agent through the API server's port-forward, as a plain TCP socket.

``kubernetes.stream.portforward`` speaks the ``v4.channel.k8s.io`` websocket subprotocol
and hands out a socket-like end of a socketpair.  The Link wants a real socket whose
family says whether descriptors can travel (they cannot here), so a thread pumps bytes
between that end and one end of a loopback TCP pair; the other end goes to the Link.

Connecting is retried transparently until the agent has answered once: bytes sent before
the first byte comes back (the ``auth`` frame) are kept and replayed on a new
port-forward, which covers the moment between "container running" and "agent listening".
After that a drop closes the Link's socket: the link to the agent is interrupted and
``tether.reconnect`` makes a new Bridge and re-authenticates.  ``on_drop(reason)`` is
called only when the first connection never got through (the session then ends).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tether")

Opener = Callable[[], Any]  # -> kubernetes PortForward


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (no descriptor passing, unlike socketpair)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        while True:
            theirs, peer = server.accept()
            if peer == ours.getsockname():  # someone else raced us to the port
                break
            theirs.close()
    for s in (ours, theirs):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


class Bridge:
    def __init__(self, open_forward: Opener, port: int, connect_deadline: float,
                 on_drop: Callable[[str], None], what: str) -> None:
        self.open_forward = open_forward
        self.port = port
        self.connect_deadline = connect_deadline
        self.on_drop = on_drop
        self.what = what
        self.link_sock, self._local = tcp_pair()
        self._forward: Any = None
        self._remote: socket.socket | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.dropped_reason = ""

    def start(self, first_forward: Any) -> socket.socket:
        self._attach(first_forward)
        self._thread = threading.Thread(target=self._run, name=f"port-forward {self.what}",
                                        daemon=True)
        self._thread.start()
        return self.link_sock

    def _attach(self, forward: Any) -> None:
        self._forward = forward
        self._remote = forward.socket(self.port)._socket
        self._remote.setblocking(True)

    def _reason(self) -> str:
        err = None
        try:
            err = self._forward.error(self.port)
        except Exception:
            pass
        return (err or "the port-forward connection closed").strip()

    def _reconnect(self, replay: bytes, why: str) -> bool:
        """Open a new port-forward and replay ``replay``; False once the deadline passed."""
        delay = 0.05
        while not self._stopped and time.monotonic() < self.connect_deadline:
            log.debug("port-forward to %s: %s; retrying", self.what, why)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                self._close_forward()
                self._attach(self.open_forward())
                if replay:
                    assert self._remote is not None
                    self._remote.sendall(replay)
                return True
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                why = str(exc)
        return False

    def _forward_closed(self) -> bool:
        try:
            return not self._forward.connected
        except Exception:  # noqa: BLE001
            return True

    def _close_forward(self) -> None:
        if self._forward is not None:
            try:
                self._forward.close()
            except Exception:  # noqa: BLE001
                pass

    def _run(self) -> None:
        sent_before_answer = bytearray()
        answered = False
        reason = ""
        try:
            while not self._stopped:
                assert self._remote is not None
                ready, _, _ = select.select([self._local, self._remote], [], [])
                if self._local in ready:
                    data = self._local.recv(262144)
                    if not data:  # the orchestrator closed the link: the session is over
                        return
                    if not answered:
                        sent_before_answer += data
                    try:
                        self._remote.sendall(data)
                    except OSError as exc:  # the forward broke under us: like EOF below
                        reason = self._reason() if self._forward_closed() else str(exc)
                        if not answered and self._reconnect(bytes(sent_before_answer), reason):
                            continue
                        break
                if self._remote in ready:
                    try:
                        data = self._remote.recv(262144)
                    except OSError as exc:
                        data, reason = b"", str(exc)
                    if data:
                        answered = True
                        self._local.sendall(data)
                        continue
                    reason = self._reason()
                    if not answered and self._reconnect(bytes(sent_before_answer), reason):
                        continue
                    break
        except OSError as exc:
            reason = reason or str(exc)
        finally:
            self._close_forward()
            if not self._stopped and reason and not answered:
                self.on_drop(f"lost the connection to the agent in {self.what} "
                             f"({reason}); run the command again to start a new session")
                time.sleep(1.0)  # let the session end with this reason, not "peer closed"
            elif reason:
                log.debug("port-forward to %s closed: %s", self.what, reason)
                self.dropped_reason = reason
            try:
                self._local.close()
            except OSError:
                pass

    def stop(self, flush: float = 0.0) -> None:
        """End the bridge; with ``flush``, first give the pump that long to pass on what the
        orchestrator wrote before it closed the link (its ``link_close``)."""
        thread = self._thread
        if flush and thread is not None and thread is not threading.current_thread():
            thread.join(flush)
        self._stopped = True
        try:
            self._local.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._close_forward()
