"""Shadow testing: summarise the exchanges of one HTTP/1 connection, compare two sides.

Both sides of a mirrored connection see the same requests (the client's bytes) and give
their own answers: the target's (sniffed by the agent) and the local program's (read by
the orchestrator). Each side runs an :class:`Exchanges` over (requests, answers) and gets
one small summary per answer: method, target, status, decoded body length and digest.
Only summaries travel over the agent link; :class:`Comparison` pairs them in order and
says what differs. Anything that is not plain HTTP/1 (TLS, HTTP/2, an upgrade, a framing
error) makes the connection *unframeable*: it is skipped, not compared.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from typing import Any

from .framing import (
    Body,
    H2Preface,
    Invalid,
    RequestFramer,
    RequestHead,
    ResponseEnd,
    ResponseFramer,
    ResponseHead,
    Tunnel,
    Upgraded,
)

log = logging.getLogger("tether")

MAX_CHUNKED_BODY = 4 * 1024 * 1024  # a chunked body longer than this is digested raw
MAX_QUEUED = 1024  # summaries one side may be ahead of the other on a connection

Summary = dict[str, Any]  # {"m": method, "u": target, "s": status, "n": length, "d": digest}


def dechunk(raw: bytes) -> bytes | None:
    """The payload of a chunked body (trailers dropped); None if it does not parse."""
    out = bytearray()
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(raw[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return None
        pos = eol + 2
        if size == 0:
            return bytes(out)
        out += raw[pos:pos + size]
        pos += size + 2


class Exchanges:
    """Requests (client bytes) and answers (server bytes) of one connection -> summaries."""

    def __init__(self) -> None:
        self._req = RequestFramer()
        self._resp = ResponseFramer()
        self._requests: deque[tuple[str, str]] = deque()
        self.broken: str | None = None
        self._head: ResponseHead | None = None
        self._chunked = False
        self._hash = hashlib.blake2b(digest_size=8)
        self._n = 0
        self._buf: bytearray | None = None

    def client(self, data: bytes) -> None:
        if self.broken is not None:
            return
        for ev in self._req.feed(data):
            if isinstance(ev, RequestHead):
                self._requests.append((ev.method.decode("latin-1"),
                                       ev.target.decode("latin-1")))
                self._resp.expect(ev.method)
            elif isinstance(ev, (Invalid, H2Preface, Upgraded, Tunnel)):
                self._break(ev)
                return
        if self._req.paused:  # an upgrade request: not something we compare
            self.broken = "the client asked to switch protocols"

    def server(self, data: bytes) -> list[Summary]:
        if self.broken is not None:
            return []
        out: list[Summary] = []
        for ev in self._resp.feed(data):
            if isinstance(ev, ResponseHead):
                if ev.status < 200:
                    continue
                self._head = ev
                self._chunked = any(k == b"transfer-encoding" and b"chunked" in v.lower()
                                    for k, v in ev.headers)
                self._hash = hashlib.blake2b(digest_size=8)
                self._n = 0
                self._buf = bytearray() if self._chunked else None
            elif isinstance(ev, Body):
                self._body(ev.raw)
            elif isinstance(ev, ResponseEnd):
                if ev.raw:
                    self._body(ev.raw)
                out.append(self._finish())
            elif isinstance(ev, (Invalid, Upgraded, Tunnel)):
                self._break(ev)
                break
        return out

    def _body(self, raw: bytes) -> None:
        if self._buf is not None:
            self._buf += raw
            if len(self._buf) > MAX_CHUNKED_BODY:  # digest the chunk framing itself
                self._hash.update(self._buf)
                self._n += len(self._buf)
                self._buf = None
            return
        self._hash.update(raw)
        self._n += len(raw)

    def _finish(self) -> Summary:
        if self._buf is not None:
            body = dechunk(bytes(self._buf))
            if body is None:
                body = bytes(self._buf)
            self._hash.update(body)
            self._n += len(body)
        self._buf = None
        head = self._head
        method, target = self._requests.popleft() if self._requests else ("?", "?")
        return {"m": method, "u": target, "s": head.status if head else 0, "n": self._n,
                "d": self._hash.hexdigest()}

    def _break(self, ev: Any) -> None:
        if isinstance(ev, Invalid):
            self.broken = f"not HTTP/1 ({ev.reason})"
        elif isinstance(ev, H2Preface):
            self.broken = "HTTP/2"
        else:
            self.broken = "the connection switched protocols"


def difference(target: Summary, local: Summary) -> str | None:
    """One log line if the answers differ, else None."""
    what = []
    if target["s"] != local["s"]:
        what.append("status differs")
    if target["n"] != local["n"] or target["d"] != local["d"]:
        what.append("body differs")
    if not what:
        return None
    return (f"shadow: {target['m']} {target['u']}: target {target['s']} ({target['n']} bytes)"
            f" vs local {local['s']} ({local['n']} bytes): {', '.join(what)}")


class Comparison:
    """Pairs one connection's target summaries with its local ones, in order."""

    def __init__(self, name: str, stats: dict[str, int]) -> None:
        self.name = name
        self.stats = stats
        self.target: deque[Summary] = deque()
        self.local: deque[Summary] = deque()
        self.skipped: str | None = None

    def add(self, side: str, summaries: list[Summary]) -> None:
        if self.skipped is not None:
            return
        q = self.target if side == "target" else self.local
        q.extend(summaries)
        while self.target and self.local:
            t, lo = self.target.popleft(), self.local.popleft()
            self.stats["compared"] += 1
            line = difference(t, lo)
            if line is not None:
                self.stats["differed"] += 1
                log.warning("%s", line)
        if len(self.target) > MAX_QUEUED or len(self.local) > MAX_QUEUED:
            self.skip("one side answered far more requests than the other")

    def skip(self, why: str) -> None:
        if self.skipped is None:
            self.skipped = why
            self.stats["skipped"] += 1
            log.debug("shadow: %s not compared: %s", self.name, why)

    @property
    def balanced(self) -> bool:
        return not self.target and not self.local

    def finish(self) -> None:
        """The connection ended: what is still unpaired was answered by one side only."""
        if self.skipped is None:
            for side, q in (("target", self.target), ("local program", self.local)):
                for s in q:
                    self.stats["unpaired"] += 1
                    log.warning("shadow: %s %s: only the %s answered (%d %d bytes)",
                                s["m"], s["u"], side, s["s"], s["n"])
        self.target.clear()
        self.local.clear()


class Book:
    """The orchestrator's side: one :class:`Comparison` per mirrored connection, fed by
    the agent's ``in_shadow`` (target) and the relay to the local program (local)."""

    def __init__(self) -> None:
        self.stats = {"compared": 0, "differed": 0, "unpaired": 0, "skipped": 0}
        self._open: dict[tuple[int, str, int], tuple[Comparison, set[str]]] = {}

    def _get(self, key: tuple[int, str, int]) -> tuple[Comparison, set[str]]:
        entry = self._open.get(key)
        if entry is None:
            entry = self._open[key] = (Comparison(f"{key[1]}:{key[2]}", self.stats), set())
        return entry

    def add(self, key: tuple[int, str, int], side: str, summaries: list[Summary]) -> None:
        self._get(key)[0].add(side, summaries)

    def skip(self, key: tuple[int, str, int], why: str) -> None:
        self._get(key)[0].skip(why)

    def ended(self, key: tuple[int, str, int], side: str) -> None:
        comp, ended = self._get(key)
        ended.add(side)
        if len(ended) == 2:
            del self._open[key]
            comp.finish()

    def summary(self) -> str:
        s = self.stats
        return (f"shadow: {s['compared']} answers compared, {s['differed']} differed, "
                f"{s['unpaired']} answered by one side only, {s['skipped']} connections "
                f"not comparable")
