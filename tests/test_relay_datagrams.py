"""tether.relay.DatagramRelay: one message per datagram, a bounded number in flight (the rest
dropped, as UDP may), the loopback port learns its one sender, close tells the other end."""

import asyncio
import socket

from tether import relay


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


async def _settle(cond, timeout=2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond() and loop.time() < end:
        await asyncio.sleep(0.01)


def test_datagrams_keep_boundaries_and_beyond_the_window_are_dropped():
    async def main():
        port, program = _udp(), _udp()
        sent, done = [], []
        dr = relay.DatagramRelay(7, port, sent.append, done.append, learn_peer=True)
        program.sendto(b"first", port.getsockname())
        await _settle(lambda: sent)
        stranger = _udp()  # the port now belongs to the program's socket: others are ignored
        stranger.sendto(b"stranger", port.getsockname())
        for i in range(relay.DGRAM_WINDOW + 20):
            program.sendto(b"d%d" % i, port.getsockname())
        await _settle(lambda: len(sent) >= relay.DGRAM_WINDOW)
        await asyncio.sleep(0.05)
        data = [m["data"] for m in sent if m["t"] == "relay_data"]
        assert len(data) == relay.DGRAM_WINDOW  # no acks: the window is full, the rest dropped
        assert data[:3] == [b"first", b"d0", b"d1"]
        assert b"stranger" not in data
        assert dr.dropped > 0
        stranger.close()
        # acks open the window again
        dr.on_ack(relay.DGRAM_WINDOW)
        program.sendto(b"after", port.getsockname())
        await _settle(lambda: sent[-1].get("data") == b"after")
        assert sent[-1] == {"t": "relay_data", "conn": 7, "data": b"after"}
        # from the link: one datagram each, acknowledged by count
        sent.clear()
        dr.on_data(b"x")
        dr.on_data(b"yy")
        program.settimeout(2)
        assert program.recv(100) == b"x"
        assert program.recv(100) == b"yy"
        assert sent == [{"t": "relay_ack", "conn": 7, "n": 1}] * 2
        # closing tells the other end and frees the port
        dr.close()
        assert sent[-1] == {"t": "relay_close", "conn": 7, "errno": 0}
        assert done == [7] and port.fileno() == -1
        program.close()

    asyncio.run(main())


def test_an_agent_end_reads_nothing_until_started():
    async def main():
        agent_sock, server = _udp(), _udp()
        agent_sock.connect(server.getsockname())
        sent = []
        dr = relay.DatagramRelay(3, agent_sock, sent.append, lambda c: None, started=False)
        dr.on_data(b"question")
        server.settimeout(2)
        answer_to = server.recvfrom(100)[1]
        server.sendto(b"answer", answer_to)
        await asyncio.sleep(0.05)
        assert [m for m in sent if m["t"] == "relay_data"] == []
        dr.on_ack(0)  # start
        await _settle(lambda: any(m["t"] == "relay_data" for m in sent))
        assert {"t": "relay_data", "conn": 3, "data": b"answer"} in sent
        dr.on_close(0)  # the other end is gone: nothing to tell it
        assert sent[-1]["t"] != "relay_close"
        server.close()

    asyncio.run(main())
