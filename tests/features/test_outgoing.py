"""The relay's private loopback pair (features/outgoing.py): connected to each other and to
nobody else, even when another process reaches the listener first."""

from __future__ import annotations

import socket

import pytest
from tether.features.outgoing import private_pair


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_thief_at_the_listener_first_is_closed_and_never_paired(monkeypatch, family):
    thieves: list[socket.socket] = []
    listen = socket.socket.listen

    def listen_then_race(self: socket.socket, *args: int) -> None:
        listen(self, *args)
        host, port = self.getsockname()[:2]
        thief = socket.socket(self.family, socket.SOCK_STREAM)
        thief.connect((host, port))  # queued before the program's end
        thieves.append(thief)

    monkeypatch.setattr(socket.socket, "listen", listen_then_race)
    ours, theirs = private_pair(family, socket.SOCK_STREAM)
    monkeypatch.undo()
    with ours, theirs:
        assert ours.getpeername() == theirs.getsockname()
        [thief] = thieves
        thief.settimeout(2)
        try:
            thief.sendall(b"EVIL")
            assert thief.recv(16) == b""  # closed, never served
        except ConnectionResetError:
            pass
        theirs.sendall(b"mine")
        ours.settimeout(2)
        assert ours.recv(16) == b"mine"
        thief.close()


def test_a_udp_pair_takes_datagrams_from_its_own_end_only(monkeypatch):
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bind = socket.socket.bind

    def bind_then_race(self: socket.socket, addr: tuple[str, int]) -> None:
        bind(self, addr)  # bound, not yet connected: the thief's datagram is queued
        thief.sendto(b"EVIL", self.getsockname())

    monkeypatch.setattr(socket.socket, "bind", bind_then_race)
    ours, theirs = private_pair(socket.AF_INET, socket.SOCK_DGRAM)
    monkeypatch.undo()
    with ours, theirs, thief:
        thief.sendto(b"EVIL", ours.getsockname())
        thief.sendto(b"EVIL", theirs.getsockname())
        theirs.send(b"mine")
        ours.send(b"yours")
        ours.settimeout(2)
        theirs.settimeout(2)
        assert ours.recv(16) == b"mine"
        assert theirs.recv(16) == b"yours"
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(16)
