"""tether.link: dispatch, replies, errors, descriptors and frame order over a socketpair."""

import asyncio
import os
import socket
import struct

import msgpack
import pytest
from tether import protocol
from tether.link import Link, RemoteError


async def _pair(handlers_b, handlers_a=None):
    a, b = socket.socketpair()
    la, lb = Link(a, handlers_a, name="a"), Link(b, handlers_b, name="b")
    tasks = [asyncio.create_task(la.serve()), asyncio.create_task(lb.serve())]
    return la, lb, tasks


async def _done(la, lb, tasks):
    la.close()
    lb.close()
    await asyncio.gather(*tasks)


def test_a_handler_that_does_not_wait_answers_and_one_that_waits_continues():
    async def main():
        gate = asyncio.get_running_loop().create_future()

        async def now(link, msg):
            return {"t": "pong"}

        async def later(link, msg):
            await gate
            await asyncio.sleep(0)
            return {"t": "agent_env_reply", "env": {"A": "1"}}

        la, lb, tasks = await _pair({"ping": now, "agent_env": later})
        slow = asyncio.create_task(la.call({"t": "agent_env"}))
        assert (await la.call({"t": "ping"}))["t"] == "pong"  # not stuck behind the slow one
        gate.set_result(None)
        assert (await slow)["env"] == {"A": "1"}
        await _done(la, lb, tasks)

    asyncio.run(main())


@pytest.mark.parametrize("wait", [False, True])
def test_handler_failures_become_error_replies(wait):
    async def main():
        async def fails(link, msg):
            if wait:
                await asyncio.sleep(0)
            if msg["id"] % 3 == 1:
                raise RemoteError("nope", "refused", errno=13)
            if msg["id"] % 3 == 2:
                raise FileNotFoundError(2, "No such file or directory")
            raise ValueError("bug")

        la, lb, tasks = await _pair({"ping": fails})
        with pytest.raises(RemoteError) as e1:
            await la.call({"t": "ping"})
        assert (e1.value.code, e1.value.errno) == ("nope", 13)
        with pytest.raises(RemoteError) as e2:
            await la.call({"t": "ping"})
        assert (e2.value.code, e2.value.errno) == ("os_error", 2)
        with pytest.raises(RemoteError) as e3:
            await la.call({"t": "ping"})
        assert e3.value.code == "internal" and "bug" in e3.value.message
        with pytest.raises(RemoteError, match="no handler"):
            await la.call({"t": "agent_env"})
        assert not lb.closed.is_set()
        await _done(la, lb, tasks)

    asyncio.run(main())


def test_descriptors_travel_both_ways_and_untaken_ones_are_closed():
    async def main():
        r, w = os.pipe()
        seen = []

        async def take(link, msg):
            fd = msg["_fds"][0]
            seen.append(os.fstat(fd).st_ino)
            r2, w2 = os.pipe()
            os.close(w2)
            return {"t": "pong", "_fds": [r2]}  # the link closes its copy after sending

        la, lb, tasks = await _pair({"ping": take})
        reply = await la.call({"t": "ping"}, fds=[w])
        assert seen == [os.fstat(w).st_ino]
        (got,) = reply["_fds"]
        assert os.read(got, 1) == b""  # the far end's write side is closed: EOF
        os.close(got)
        for fd in (r, w):
            os.close(fd)
        await _done(la, lb, tasks)

    asyncio.run(main())


def test_a_reply_reaches_its_caller_before_the_requests_that_followed_it_run():
    async def main():
        a, b = socket.socketpair()
        order = []

        async def event(link, msg):
            order.append("handler")

        la = Link(a, {"event": event}, name="a")
        task = asyncio.create_task(la.serve())

        async def caller():
            await la.call({"t": "ping"})
            order.append("caller")

        call = asyncio.create_task(caller())
        await asyncio.sleep(0.01)
        request = msgpack.unpackb(b.recv(4096)[4:])
        # Reply and a following request in one write: one read on the other side.
        b.sendall(protocol.encode({"t": "pong", "id": request["id"]})
                  + protocol.encode({"t": "event", "kind": "k", "message": "m"}))
        await call
        await asyncio.sleep(0.01)
        assert order == ["caller", "handler"]
        la.close()
        b.close()
        await task

    asyncio.run(main())


def test_a_reply_ending_a_large_read_still_reaches_its_caller_before_what_follows():
    """A busy link (a relayed download) reads on within one callback after a large read:
    the frames of that next read still wait for the caller of a reply of the first."""
    async def main():
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        order = []

        async def event(link, msg):
            order.append(msg["kind"])

        la = Link(a, {"event": event}, name="a")

        async def caller():
            await la.call({"t": "ping"})
            order.append("caller")

        call = asyncio.create_task(caller())
        await asyncio.sleep(0.01)
        request = msgpack.unpackb(b.recv(4096)[4:])
        reply = protocol.encode({"t": "pong", "id": request["id"]})
        pad = b""
        n = 262144 - len(reply) - 64
        while len(pad) + len(reply) != 262144:  # the first read fills the read buffer
            pad = protocol.encode({"t": "event", "kind": "pad", "message": "x" * n})
            n += 262144 - len(pad) - len(reply)
        b.sendall(pad + reply + protocol.encode({"t": "event", "kind": "after",
                                                 "message": "m"}))
        task = asyncio.create_task(la.serve())  # everything is queued before the first read
        await call
        await asyncio.sleep(0.01)
        assert order == ["pad", "caller", "after"]
        la.close()
        b.close()
        await task

    asyncio.run(main())


def test_frames_split_across_reads_and_a_malformed_frame_closes_only_that_link():
    async def main():
        a, b = socket.socketpair()
        got = []

        async def event(link, msg):
            got.append(msg["message"])

        la = Link(a, {"event": event}, name="a")
        task = asyncio.create_task(la.serve())
        frames = b"".join(protocol.encode({"t": "event", "kind": "k", "message": str(i)})
                          for i in range(50))
        for i in range(0, len(frames), 7):
            b.sendall(frames[i:i + 7])
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        assert got == [str(i) for i in range(50)]
        body = msgpack.packb({"t": "launch_missiles"})
        b.sendall(struct.pack(">I", len(body)) + body)
        await asyncio.wait_for(task, 2)
        assert "unknown message type" in la.close_reason
        b.close()

    asyncio.run(main())


def test_a_handler_may_close_its_link_and_pending_calls_fail():
    async def main():
        async def bye(link, msg):
            link.close("told to")

        la, lb, tasks = await _pair({"ping": bye})
        with pytest.raises(Exception, match="peer closed|told to|closed"):
            await asyncio.wait_for(la.call({"t": "ping"}), 2)
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        assert lb.close_reason == "told to"

    asyncio.run(main())
