"""Reliability of a steal: whatever dies (the local program, the orchestrator, the agent;
SIGKILL included), the target answers its own traffic again within 2 seconds and no
redirect rule is left in its network namespace. Two sessions never break each other."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from incoming_support import (
    LOCAL_ANSWER,
    PORT,
    TARGET_ANSWER,
    curl,
    nft_rules,
    target_answers_within,
)

FILTER = {"mode": "steal", "http_filter": {"path_filter": r".*user=me\b.*"}}


@pytest.mark.parametrize("victim", ["program", "orchestrator", "agent"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_target_recovers_within_2s_whatever_dies(target, session, victim, sig):
    s = session(target, {"mode": "steal"})
    assert curl(target, "/") == LOCAL_ANSWER
    assert "tether" in nft_rules(target)
    pid = {"program": lambda: s.proc.pid, "orchestrator": s.orchestrator_pid,
           "agent": s.agent_pid}[victim]()
    os.kill(pid, sig)
    target_answers_within(target, 2)
    deadline = time.monotonic() + 2
    while "tether" in nft_rules(target) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tether" not in nft_rules(target)
    if victim != "orchestrator":
        # A broken session says so and ends the program: never a silent half-session.
        s.proc.wait(10)


def test_filtered_steal_recovers_when_the_agent_is_killed(target, session):
    s = session(target, FILTER)
    assert curl(target, "/?user=me") == LOCAL_ANSWER
    os.kill(s.agent_pid(), signal.SIGKILL)
    target_answers_within(target, 2)
    assert curl(target, "/?user=me") == TARGET_ANSWER
    s.wait_for("lost the agent")
    assert "tether" not in nft_rules(target)


def test_program_that_stops_listening_gives_the_port_back(target, session):
    # The program closes its listener but keeps running: the first connection it
    # refuses makes tether give the port back, and that connection is served by the
    # target instead of being dropped.
    script = ("import socket, time\n"
              "s = socket.create_server(('0.0.0.0', 8080))\n"
              "print('listening', flush=True)\n"
              "time.sleep(1.5); s.close(); print('closed', flush=True); time.sleep(30)\n")
    s = session(target, {"mode": "steal"}, argv=["python3", "-c", script])
    s.wait_for("closed")
    assert curl(target, "/gone") == TARGET_ANSWER
    s.wait_for("the target serves it again")
    target_answers_within(target, 2)
    deadline = time.monotonic() + 2
    while "8080" in nft_rules(target) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "8080 :" not in nft_rules(target)


def test_in_flight_requests_of_the_target_survive_start_and_stop(target, session):
    # A keep-alive connection opened before the session keeps talking to the target
    # through the session and after it: the redirect only ever takes connection openings
    # (even when installing it switches conntrack on for the namespace).
    import http.client

    before = http.client.HTTPConnection(target.ip, PORT, timeout=5)
    before.request("GET", "/before")
    assert before.getresponse().read().decode() == TARGET_ANSWER
    s = session(target, {"mode": "steal"})
    before.request("GET", "/during")
    assert before.getresponse().read().decode() == TARGET_ANSWER
    assert curl(target, "/new") == LOCAL_ANSWER
    s.stop()
    before.request("GET", "/after")
    assert before.getresponse().read().decode() == TARGET_ANSWER
    before.close()


def test_two_sessions_on_one_target_do_not_break_each_other(target, session):
    a = session(target, FILTER)
    b_script = ["python3", str(__import__("incoming_support").SILLY), "8080",
                "This is developer B"]
    b = session(target, {"mode": "steal",
                         "http_filter": {"path_filter": r".*user=bob\b.*"}}, argv=b_script)
    answers = {curl(target, "/?user=me"), curl(target, "/?user=bob"), curl(target, "/")}
    # Whoever's redirect sees the connection first serves its matches; everything else
    # still reaches the target, and neither session fails.
    assert TARGET_ANSWER in answers
    assert answers <= {LOCAL_ANSWER, TARGET_ANSWER, "This is developer B\n"}
    assert a.proc.poll() is None and b.proc.poll() is None
    b.stop()
    assert curl(target, "/?user=me") == LOCAL_ANSWER
    a.stop()
    target_answers_within(target, 2)
    assert "tether" not in nft_rules(target)


# ---- exhaustion ----------------------------------------------------------------------

HEADER = {"mode": "steal", "http_filter": {"header_filter": r"^x-user: me$"}}


@contextlib.contextmanager
def soft_descriptor_limit(limit: int) -> Iterator[None]:
    """Processes started inside get the usual soft limit (ours stays as it was after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def agent_listen_port(target) -> int:
    found = re.search(r"8080 : (\d+)", nft_rules(target))
    assert found, nft_rules(target)
    return int(found.group(1))


def stolen_connections(target, lport: int) -> int:
    out = target.exec(["ss", "-Htn", "state", "established", f"sport = :{lport}"]).stdout
    return len(out.splitlines())


def idle_clients(target, n: int) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        c = socket.create_connection((target.ip, PORT), timeout=5)
        clients.append(c)
    return clients


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def test_a_thousand_idle_clients_at_the_usual_soft_limit_leave_the_port_working(target, session):
    # The agent and the orchestrator start with a soft limit of 1,024 and raise it
    # themselves: 1,100 silent clients are all accepted, and the developer's requests and
    # everyone else's still get through.
    with soft_descriptor_limit(1024):
        s = session(target, HEADER)
    lport = agent_listen_port(target)
    clients = idle_clients(target, 1100)
    try:
        wait_until(lambda: stolen_connections(target, lport) >= 1100, 20,
                   "1,100 accepted connections")
        assert curl(target, "/", "-H", "x-user: me") == LOCAL_ANSWER
        assert curl(target, "/") == TARGET_ANSWER
        agent = s.agent_pid()
        assert resource.prlimit(agent, resource.RLIMIT_NOFILE)[0] > 1100
        assert resource.prlimit(s.orchestrator_pid(), resource.RLIMIT_NOFILE)[0] > 1100
    finally:
        for c in clients:
            c.close()
    assert s.proc.poll() is None


def test_when_descriptors_run_out_the_agent_sheds_and_recovers(target, session):
    # A hard limit that cannot be raised: the agent runs out of descriptors. It sheds new
    # connections instead of leaving them hanging, keeps accepting, and once the idle
    # clients are gone the port works again, for the developer and for everyone else.
    s = session(target, HEADER)
    for pid in (s.agent_pid(), s.orchestrator_pid()):
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (512, 512))
    clients = []
    try:
        for _ in range(700):
            try:
                c = socket.create_connection((target.ip, PORT), timeout=5)
            except OSError:
                continue
            clients.append(c)
        s.wait_for("shedding new connections")
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: curl_ok(target, "/", "-H", "x-user: me") == LOCAL_ANSWER, 5,
               "answer from the developer after the idle clients left")
    assert curl(target, "/") == TARGET_ANSWER
    assert s.proc.poll() is None


def curl_ok(target, *args: str) -> str | None:
    try:
        return curl(target, *args, timeout=2)
    except AssertionError:
        return None


def test_a_dead_agent_listener_is_replaced_and_never_leaves_the_port_blackholed(target,
                                                                                 session):
    # The agent's listening socket is destroyed under it (ss -K): the redirect goes first,
    # the session re-subscribes with a new listener, and the port keeps answering.
    s = session(target, HEADER)
    lport = agent_listen_port(target)
    target.exec(["ss", "-K", "state", "listening", f"sport = :{lport}"], check=True)
    s.wait_for("is stolen again")
    assert agent_listen_port(target) != lport
    assert curl(target, "/", "-H", "x-user: me") == LOCAL_ANSWER
    assert curl(target, "/") == TARGET_ANSWER
    assert s.proc.poll() is None


# ---- start and stop under load -------------------------------------------------------


class Hammer:
    """Clients of the target that notice every failed request: ``keepalive`` ones reuse one
    connection (and, like curl and browsers, retry once on a fresh connection when a
    reused one turns out closed before any byte of the answer: the server may close an
    idle keep-alive connection), the others open a new connection per request and never
    retry. Bounded in requests and time."""

    def __init__(self, target, keepalive: int, fresh: int, max_requests: int = 20000) -> None:
        import threading

        self.target = target
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._keepalive, daemon=True)
                        for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
        for t in self.threads:
            t.start()

    def _answer(self, conn) -> str:
        conn.request("GET", "/load")
        return conn.getresponse().read().decode()

    def _record(self, answer: str | None, error: str | None) -> None:
        if answer == TARGET_ANSWER:
            self.ok += 1
        else:
            self.failures.append(error or f"answer {answer!r}")

    def _keepalive(self) -> None:
        import http.client

        conn = http.client.HTTPConnection(self.target.ip, PORT, timeout=5)
        for _ in range(self.max_requests):
            if self.stop.is_set():
                break
            reused = conn.sock is not None
            try:
                self._record(self._answer(conn), None)
                continue
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if not reused:
                    self._record(None, f"keep-alive, new connection: {e!r}")
                    continue
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._record(None, f"keep-alive: {e!r}")
                continue
            try:  # the one retry of a reused connection
                self._record(self._answer(conn), None)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._record(None, f"keep-alive, after a retry: {e!r}")
        conn.close()

    def _fresh(self) -> None:
        import http.client

        for _ in range(self.max_requests):
            if self.stop.is_set():
                break
            conn = http.client.HTTPConnection(self.target.ip, PORT, timeout=5)
            try:
                conn.request("GET", "/load", headers={"Connection": "close"})
                self._record(conn.getresponse().read().decode(), None)
            except (OSError, http.client.HTTPException) as e:
                self._record(None, f"new connection: {e!r}")
            finally:
                conn.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_sessions_starting_and_stopping_never_fail_the_targets_other_clients(target, session):
    hammer = Hammer(target, keepalive=2, fresh=2)
    try:
        for i in range(5):
            s = session(target, HEADER)
            assert curl(target, "/", "-H", "x-user: me") == LOCAL_ANSWER
            time.sleep(0.2)
            s.stop()
            assert s.proc.returncode is not None, f"session {i} did not stop"
    finally:
        hammer.finish()
    assert hammer.ok > 100, hammer.ok
    assert hammer.failures == [], f"{len(hammer.failures)} of {hammer.ok + len(hammer.failures)}"


# ---- connection tracking ------------------------------------------------------------


def nated_entries(target) -> list[str]:
    """conntrack entries of connections to the port that were redirected (the reply comes
    from another port than the one the client asked for)."""
    out = []
    for line in Path(f"/proc/{target.pid}/net/nf_conntrack").read_text().splitlines():
        ports = re.findall(r"[sd]port=(\d+)", line)
        if len(ports) == 4 and ports[1] == str(PORT) and ports[2] != str(PORT):
            out.append(line)
    return out


def pooled_clients(target, n: int) -> list[socket.socket]:
    """Keep-alive connections from fixed client ports, like a load balancer's pool."""
    import random

    base = random.randrange(20000, 30000, 100)
    clients = []
    for i in range(n):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", base + i))
        c.settimeout(5)
        c.connect((target.ip, PORT))
        clients.append(c)
    return clients


def ask_on(c: socket.socket) -> str:
    c.sendall(b"GET /pool HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            re.search(rb"Content-Length: (\d+)", data).group(1)):
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


def reset(c: socket.socket) -> None:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


@pytest.mark.parametrize("end", ["stop", "agent killed"])
def test_the_next_session_steals_from_client_ports_an_earlier_one_used(target, session, end):
    # A pool of keep-alive clients is stolen, the session ends (cleanly, or its agent is
    # killed so nothing cleans up), the pool reconnects from the same client ports: the
    # next session steals every one of them, and no entry still points at the dead agent.
    first = session(target, {"mode": "steal"})
    dead = f"sport={agent_listen_port(target)} "
    pool = pooled_clients(target, 20)
    ports = [c.getsockname()[1] for c in pool]
    assert {ask_on(c) for c in pool} == {LOCAL_ANSWER}
    if end == "stop":
        first.stop()
        wait_until(lambda: not nated_entries(target), 3, "entries forgotten at teardown")
    else:
        os.kill(first.agent_pid(), signal.SIGKILL)
        first.proc.wait(10)
        assert nated_entries(target)  # what the kernel kept of the dead agent's connections
    for c in pool:
        reset(c)
    second = session(target, {"mode": "steal"})
    assert [e for e in nated_entries(target) if dead in e] == []
    answers = []
    for port in ports:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", port))
        c.settimeout(5)
        try:
            c.connect((target.ip, PORT))
            answers.append(ask_on(c))
        except OSError as exc:
            answers.append(repr(exc))
        reset(c)
    assert answers == [LOCAL_ANSWER] * len(ports)
    second.stop()


# ---- long sessions -------------------------------------------------------------------


def footprint(pid: int) -> tuple[int, int]:
    """(open descriptors, resident kB) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def stolen_requests(target, n: int, threads: int = 8) -> int:
    import concurrent.futures
    import http.client

    def one(_: int) -> bool:
        conn = http.client.HTTPConnection(target.ip, PORT, timeout=5)
        try:
            conn.request("GET", "/", headers={"x-user": "me", "Connection": "close"})
            return conn.getresponse().read().decode() == LOCAL_ANSWER
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(n)))


def test_thousands_of_stolen_connections_leave_descriptors_and_memory_flat(target, session):
    # Each stolen connection crosses the agent's router and the orchestrator's relay. After
    # a warm-up (allocator pools, the loop's buffers), thousands more leave both processes
    # with the same descriptors and no more than allocator noise of memory. (Traced with
    # tracemalloc over 24,000 connections: the Python heap of the orchestrator moved by
    # 3 KiB; its resident size settles after the first few thousand.)
    s = session(target, HEADER)
    pids = (s.orchestrator_pid(), s.agent_pid())
    assert stolen_requests(target, 800) == 800
    time.sleep(0.3)
    before = [footprint(pid) for pid in pids]
    assert stolen_requests(target, 2000) == 2000
    time.sleep(0.3)
    after = [footprint(pid) for pid in pids]
    for (fds0, rss0), (fds1, rss1), who in zip(before, after, ("orchestrator", "agent"), strict=True):
        assert fds1 == fds0, f"{who}: {fds0} -> {fds1} descriptors"
        assert rss1 - rss0 < 1024, f"{who}: resident {rss0} -> {rss1} kB"
