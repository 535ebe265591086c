"""tether's test bed: network namespaces that stand in for Kubernetes pods.

This module owns everything a test (or the demo script, or a benchmark) needs to get a
"pod" on this machine and to get rid of it again:

* a network namespace with a veth pair to the host (a /30 out of 198.18.0.0/16, the host
  side is the pod's default gateway), or - with ``behind=front`` - a namespace reachable
  only from ``front`` (a /30 out of 198.19.0.0/16 with no route on the host): "the
  database only the pod can reach";
* a main process in that netns with its own mount and UTS namespace, exactly the
  environment it was given, ``/etc/hosts`` and ``/etc/resolv.conf`` from
  ``/etc/netns/<name>/`` and extra ``files`` that exist only in its mount namespace;
* teardown that always runs, and a safety net (:func:`cleanup_stale`) that removes pods
  whose owning process died without tearing them down.

All test addresses are inside 198.18.0.0/15 and the host gets a blackhole route for that
range, so no test packet can ever leave the machine.

Use it from pytest through the ``pod_factory`` / ``pod`` fixtures (``tests/conftest.py``)
or from a script::

    with make_pod("backend", env={"DB_HOST": "db"}, cmd=["python3", "-m", "http.server"]) as p:
        p.wait_port(8000)
        ...

Concurrent test runs on the same machine are safe: addresses are allocated under a lock
file, and the safety net only removes pods whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

PREFIX = "tt-"
TEST_NET = "198.18.0.0/15"
FRONT_NET = ipaddress.IPv4Network("198.18.0.0/16")
BEHIND_NET = ipaddress.IPv4Network("198.19.0.0/16")
STATE_DIR = Path("/run/tether-test-pods")
NETNS_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")

# Fails at once (ICMP port unreachable on the pod's loopback) instead of hanging:
# Python's http.server does reverse lookups and would stall seconds on a dead server.
DEFAULT_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

_SLOTS = FRONT_NET.num_addresses // 4  # /30 subnets per range; slot 0 is never used


class PodError(RuntimeError):
    """A pod could not be created (the message carries the failing command's stderr)."""


# --------------------------------------------------------------------------- host setup

_host_ready = False


def _run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise PodError(
            f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def ensure_host_setup() -> None:
    """Blackhole 198.18.0.0/15 on the host and clean up pods of dead test runs (once)."""
    global _host_ready
    if _host_ready:
        return
    if os.geteuid() != 0:
        raise PodError("test pods need root (network namespaces, veth, mounts)")
    for d in (STATE_DIR, NETNS_DIR, ETC_NETNS_DIR):
        d.mkdir(parents=True, exist_ok=True)
    # More specific veth routes (/30) still win; everything else in the range is dropped.
    if "blackhole" not in _run(["ip", "route", "show", "type", "blackhole", TEST_NET]):
        proc = subprocess.run(
            ["ip", "route", "add", "blackhole", TEST_NET],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 and "File exists" not in proc.stderr:
            raise PodError(
                f"ip route add blackhole {TEST_NET} failed: {proc.stderr.strip()}"
            )
    cleanup_stale()
    _host_ready = True


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _read_metas() -> dict[str, dict[str, Any]]:
    metas = {}
    for meta_file in STATE_DIR.glob(f"{PREFIX}*/meta.json"):
        with contextlib.suppress(OSError, ValueError):
            metas[meta_file.parent.name] = json.loads(meta_file.read_text())
    return metas


def _owner_alive(meta: Mapping[str, Any]) -> bool:
    return _proc_start_time(int(meta.get("owner_pid", 0))) == meta.get("owner_start")


def cleanup_stale() -> list[str]:
    """Remove ``tt-`` pods whose owning process is gone (crashed earlier runs).

    Pods of live test processes (another engineer's run) are left alone. Returns the
    names of the removed pods.
    """
    removed = []
    with _state_lock():
        metas = _read_metas()
        live = {name for name, meta in metas.items() if _owner_alive(meta)}
        names = {p.name for p in NETNS_DIR.glob(f"{PREFIX}*")}
        names |= {p.name for p in ETC_NETNS_DIR.glob(f"{PREFIX}*")}
        names |= {p.name for p in STATE_DIR.glob(f"{PREFIX}*")}
        for name in sorted(names - live):
            _destroy(name, metas.get(name, {}), live_metas=[metas[n] for n in live])
            removed.append(name)
        # Host veth ends whose pod state is gone (the netns normally takes them along).
        live_links = {metas[n].get("host_if") for n in live}
        for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
            m = re.match(r"\d+: (tth\d+)[@:]", line)
            if m and m.group(1) not in live_links:
                _run(["ip", "link", "del", m.group(1)], check=False)
    return removed


# --------------------------------------------------------------------------- the pod


@dataclass
class Pod:
    """A running test pod. Create it with :class:`PodFactory` or :func:`make_pod`."""

    name: str  #: netns name, e.g. ``tt-backend-3f2a`` (also the pod's hostname)
    ip: str  #: the pod's address (reachable from the host unless ``behind`` is set)
    gateway: str  #: the other end of the pod's veth (host, or the front pod)
    env: dict[str, str]  #: the main process' exact environment
    netns_path: str  #: ``/run/netns/<name>``
    behind: Pod | None = None  #: the only pod that can reach this one, if any
    host_if: str | None = None  #: host end of the veth (``None`` for a behind pod)
    main: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _children: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        """Pid of the main process (``sleep infinity`` unless ``cmd`` was given)."""
        assert self.main is not None
        return self.main.pid

    @property
    def root(self) -> Path:
        """The pod's file system as the host sees it (``/proc/<pid>/root``)."""
        return Path(f"/proc/{self.pid}/root")

    def _nsenter(self, argv: Sequence[str], kw: dict[str, Any]) -> list[str]:
        wd = kw.pop("cwd", None) or os.getcwd()
        prefix = ["nsenter", "-t", str(self.pid), "-n", "-m", "-u", f"--wd={wd}", "--"]
        return prefix + [os.fspath(a) for a in argv]

    def exec(
        self, argv: Sequence[str | os.PathLike[str]], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the pod's net, mount and UTS namespaces and wait for it.

        Keyword arguments go to :func:`subprocess.run`; the defaults are
        ``capture_output=True, text=True`` and the *caller's* environment (pass
        ``env=pod.env`` to run with the pod's). ``cwd`` defaults to the caller's.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        check = kw.pop("check", False)
        return subprocess.run(self._nsenter(argv, kw), check=check, **kw)

    def popen(
        self, argv: Sequence[str | os.PathLike[str]], **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in the pod (like :meth:`exec`); it is killed at teardown."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self._nsenter(argv, kw), **kw)
        self._children.append(proc)
        return proc

    def listening(self, port: int) -> bool:
        """Whether a TCP socket listens on ``port`` in the pod's netns (no traffic sent)."""
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in (
                    Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]
                ):
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        return True
        return False

    def wait_port(self, port: int, timeout: float = 5.0) -> None:
        """Wait until something in the pod listens on TCP ``port``."""
        deadline = time.monotonic() + timeout
        while not self.listening(port):
            if self.main is not None and self.main.poll() is not None:
                raise PodError(
                    f"pod {self.name}: main process exited ({self.main.returncode})"
                )
            if time.monotonic() > deadline:
                raise PodError(
                    f"pod {self.name}: nothing listens on port {port} after {timeout}s"
                )
            time.sleep(0.01)


def _sanitize(hint: str) -> str:
    return re.sub(r"[^a-z0-9]", "", hint.lower())[:8] or "pod"


def _slot_net(base: ipaddress.IPv4Network, slot: int) -> tuple[str, str]:
    first = int(base.network_address) + 4 * slot
    return str(ipaddress.IPv4Address(first + 1)), str(ipaddress.IPv4Address(first + 2))


def _allocate(name: str, kind: str, meta: dict[str, Any]) -> int:
    with _state_lock():
        used = {m["slot"] for m in _read_metas().values() if m.get("kind") == kind}
        free = [s for s in range(1, _SLOTS) if s not in used]
        if not free:
            raise PodError(f"no free {kind} address slots in {TEST_NET}")
        slot = free[secrets.randbelow(min(len(free), 64))]
        meta.update(slot=slot, kind=kind)
        (STATE_DIR / name).mkdir(parents=True)
        (STATE_DIR / name / "meta.json").write_text(json.dumps(meta))
    return slot


def _save_meta(name: str, meta: Mapping[str, Any]) -> None:
    (STATE_DIR / name / "meta.json").write_text(json.dumps(meta))


def _plan_files(
    name: str, files: Mapping[str, str | bytes], meta: dict[str, Any]
) -> list[list[str]]:
    """Turn ``files`` into mount operations for the pod's bootstrap.

    An existing host file is covered by a bind mount of a staged copy. A missing file is
    added through an overlay on its nearest existing ancestor directory, so the rest of
    that directory stays visible and the host never sees the new file. A missing
    top-level directory has to be created on the host (empty; removed at teardown).
    """
    stage = STATE_DIR / name
    shared_dirs = {d for m in _read_metas().values() for d in m.get("created_dirs", [])}
    binds: list[list[str]] = []
    overlays: dict[Path, list[tuple[Path, bytes]]] = {}
    for i, (raw_path, content) in enumerate(sorted(files.items())):
        path = Path(raw_path)
        if not path.is_absolute():
            raise PodError(f"files: {raw_path!r} is not an absolute path")
        data = content.encode() if isinstance(content, str) else content
        if path.is_dir():
            raise PodError(f"files: {raw_path!r} is a directory on the host")
        if path.exists():
            staged = stage / "bind" / str(i)
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(data)
            binds.append(["bind", str(staged), str(path)])
            continue
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        top = Path("/") / path.parts[1]
        if ancestor == Path("/") or ancestor == top and str(top) in shared_dirs:
            # Ours, or another live pod's: its teardown must not remove it under us.
            top.mkdir(exist_ok=True)
            if str(top) not in meta.setdefault("created_dirs", []):
                meta["created_dirs"].append(str(top))
            ancestor = top
        overlays.setdefault(ancestor, []).append((path, data))
    # An ancestor below another one joins the outer overlay (overlayfs merges directories).
    for inner in sorted(overlays, key=lambda p: len(p.parts), reverse=True):
        outer = next((o for o in overlays if o != inner and o in inner.parents), None)
        if outer is not None:
            overlays[outer] += overlays.pop(inner)
    ops = []
    for j, (ancestor, entries) in enumerate(overlays.items()):
        upper, work = stage / "ovl" / str(j) / "upper", stage / "ovl" / str(j) / "work"
        work.mkdir(parents=True)
        for path, data in entries:
            target = upper / path.relative_to(ancestor)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        ops.append(["overlay", str(ancestor), str(upper), str(work)])
    return ops + binds


def _hosts_file(name: str, hint: str, ip: str, hosts: Mapping[str, str]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{ip}\t{name} {hint}",
    ]
    lines += [f"{addr}\t{host}" for host, addr in hosts.items()]
    return "\n".join(lines) + "\n"


def _destroy(
    name: str, meta: Mapping[str, Any], live_metas: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Kill everything in the pod's netns and remove every trace of it. Idempotent."""
    netns = NETNS_DIR / name
    _kill_netns_processes(netns)
    if netns.exists():
        _run(["ip", "netns", "del", name], check=False)
    if meta.get("host_if"):
        _run(["ip", "link", "del", meta["host_if"]], check=False)
    shutil.rmtree(ETC_NETNS_DIR / name, ignore_errors=True)
    shutil.rmtree(STATE_DIR / name, ignore_errors=True)
    in_use = {d for m in live_metas for d in m.get("created_dirs", [])}
    for d in meta.get("created_dirs", []):
        if d not in in_use:
            with contextlib.suppress(OSError):
                # Only if still empty: never remove what someone else put there.
                os.rmdir(d)


def _kill_netns_processes(netns: Path) -> None:
    try:
        ino = netns.stat().st_ino
        dev = netns.stat().st_dev
    except OSError:
        return
    deadline = time.monotonic() + 3
    while True:
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{entry.name}/ns/net")
                    if (st.st_ino, st.st_dev) == (ino, dev):
                        pids.append(int(entry.name))
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


class PodFactory:
    """Creates pods and tears all of them down on :meth:`close` (also a context manager)."""

    def __init__(self) -> None:
        self.pods: list[Pod] = []
        self._metas: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(
        self,
        name_hint: str = "pod",
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        hosts: Mapping[str, str] | None = None,
        cmd: Sequence[str | os.PathLike[str]] | None = None,
        behind: Pod | None = None,
        dns: str | None = None,
    ) -> Pod:
        """Create a pod.

        ``env``: the main process' exact environment. ``files``: ``{abs_path: content}``
        visible only inside the pod. ``hosts``: extra ``/etc/hosts`` entries
        ``{name: ip}``. ``cmd``: the main process (default ``sleep infinity``); it runs
        with cwd ``/``. ``behind``: make this pod reachable only from that pod. ``dns``:
        nameserver address for ``resolv.conf`` (default: ``127.0.0.1``, which fails
        fast).
        """
        ensure_host_setup()
        hint = _sanitize(name_hint)
        name = f"{PREFIX}{hint}-{secrets.token_hex(2)}"
        while (STATE_DIR / name).exists() or (NETNS_DIR / name).exists():
            name = f"{PREFIX}{hint}-{secrets.token_hex(2)}"
        meta: dict[str, Any] = {
            "name": name,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
        }
        kind = "behind" if behind is not None else "front"
        slot = _allocate(name, kind, meta)
        self._metas[name] = meta
        try:
            return self._create(
                name, hint, slot, meta, env, files, hosts, cmd, behind, dns
            )
        except PodError as e:
            self._teardown(name)
            raise PodError(f"pod {name}: {e}") from None
        except BaseException:
            self._teardown(name)
            raise

    create = __call__

    def _create(
        self,
        name: str,
        hint: str,
        slot: int,
        meta: dict[str, Any],
        env: Mapping[str, str] | None,
        files: Mapping[str, str | bytes] | None,
        hosts: Mapping[str, str] | None,
        cmd: Sequence[str | os.PathLike[str]] | None,
        behind: Pod | None,
        dns: str | None,
    ) -> Pod:
        gateway, ip = _slot_net(BEHIND_NET if behind else FRONT_NET, slot)
        etc = ETC_NETNS_DIR / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(_hosts_file(name, hint, ip, hosts or {}))
        resolv = (
            f"nameserver {dns}\noptions timeout:1 attempts:1\n"
            if dns
            else DEFAULT_RESOLV_CONF
        )
        (etc / "resolv.conf").write_text(resolv)
        with _state_lock():  # created_dirs are shared with concurrent runs
            mount_ops = _plan_files(name, files or {}, meta)
            _save_meta(name, meta)

        _run(["ip", "netns", "add", name])
        if behind is None:
            host_if = f"tth{slot}"
            meta["host_if"] = host_if
            _save_meta(name, meta)
            if Path(f"/sys/class/net/{host_if}").exists():  # left by a crashed run
                _run(["ip", "link", "del", host_if], check=False)
            _run(
                ["ip", "-batch", "-"],
                stdin=(
                    f"link add {host_if} type veth peer name eth0 netns {name}\n"
                    f"addr add {gateway}/30 dev {host_if}\n"
                    f"link set {host_if} up\n"
                ),
            )
            # Per-interface forwarding lets pods reach each other through the host without
            # turning the whole host into a router.
            Path(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding").write_text("1")
        else:
            _run(
                ["ip", "-n", behind.name, "-batch", "-"],
                stdin=(
                    f"link add ttb{slot} type veth peer name eth0 netns {name}\n"
                    f"addr add {gateway}/30 dev ttb{slot}\n"
                    f"link set ttb{slot} up\n"
                ),
            )
        _run(
            ["ip", "-n", name, "-batch", "-"],
            stdin=(
                "link set lo up\n"
                f"addr add {ip}/30 dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {gateway}\n"
            ),
        )

        pod = Pod(
            name=name,
            ip=ip,
            gateway=gateway,
            env=dict(env or {}),
            netns_path=str(NETNS_DIR / name),
            behind=behind,
            host_if=meta.get("host_if"),
        )
        self.pods.append(pod)
        argv = [os.fspath(a) for a in (cmd or ["sleep", "infinity"])]
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0])
        if exe is None:
            raise PodError(f"cmd: {argv[0]!r} not found on the host's PATH")
        spec = {
            "netns": pod.netns_path,
            "hostname": name,
            "mounts": mount_ops
            + [
                ["bind", str(etc / "hosts"), "/etc/hosts"],
                ["bind", str(etc / "resolv.conf"), "/etc/resolv.conf"],
            ],
            "exe": exe,
            "argv": argv,
            "env": pod.env,
        }
        pod.main = _spawn(spec)
        return pod

    def _teardown(self, name: str) -> None:
        meta = self._metas.pop(name, {})
        pod = next((p for p in self.pods if p.name == name), None)
        if pod is not None:
            self.pods.remove(pod)
            procs = list(pod._children) + ([pod.main] if pod.main else [])
            for proc in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        with _state_lock():
            others = [
                m for n, m in _read_metas().items() if n != name and _owner_alive(m)
            ]
            _destroy(name, meta, live_metas=others)
        if pod is not None:
            for proc in list(pod._children) + ([pod.main] if pod.main else []):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)

    def close(self) -> None:
        """Tear down every pod this factory made, newest first.

        A failure does not stop the others; they are reported together at the end.
        """
        errors = []
        for pod in list(reversed(self.pods)):
            try:
                self._teardown(pod.name)
            except Exception as e:  # noqa: BLE001 - keep tearing down the others
                errors.append(f"{pod.name}: {e}")
        for name in list(self._metas):
            self._teardown(name)
        self.pods.clear()
        if errors:
            raise PodError("teardown failed: " + "; ".join(errors))


@contextlib.contextmanager
def make_pod(name_hint: str = "pod", **kw: Any) -> Iterator[Pod]:
    """A single pod for scripts: ``with make_pod("backend", env=...) as pod: ...``."""
    with PodFactory() as factory:
        yield factory(name_hint, **kw)


# --------------------------------------------------------------------------- bootstrap


def _spawn(spec: Mapping[str, Any]) -> subprocess.Popen[bytes]:
    """Start the bootstrap and return once it exec'd the main process (or raise)."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(w), json.dumps(spec)],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={},
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as status:
        err = status.read()  # EOF when the bootstrap exec'd (the pipe is close-on-exec)
    if err:
        proc.wait()
        raise PodError(f"pod bootstrap failed: {err.decode(errors='replace')}")
    return proc


# Runs in the child (as ``python -I -S -c``: only os, json and ctypes, so it starts in a
# few ms): enter the netns, build the mount and UTS namespaces, exec the main process.
# argv: status fd, spec as JSON. Any failure is written to the status fd for the parent.
_BOOTSTRAP = r"""
import ctypes, json, os, sys
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWNET = 0x00020000, 0x04000000, 0x40000000
MS_BIND, MS_REC, MS_SLAVE, MNT_DETACH = 4096, 16384, 1 << 19, 2
libc = ctypes.CDLL(None, use_errno=True)

def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

def mount(src, dst, fstype, flags, data=None):
    enc = [s.encode() if s is not None else None for s in (src, dst, fstype, data)]
    rc = libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3])
    check(rc, f"mount {src} on {dst}")

status_fd, spec = int(sys.argv[1]), json.loads(sys.argv[2])
try:
    os.set_inheritable(status_fd, False)  # closes on exec: EOF tells the parent "done"
    fd = os.open(spec["netns"], os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns")
    os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    # Slave, not private: host mounts made later still show up, ours never leak out.
    mount(None, "/", None, MS_REC | MS_SLAVE)
    host = spec["hostname"].encode()
    check(libc.sethostname(host, len(host)), "sethostname")
    # /sys of the pod's netns (like `ip netns exec`), so /sys/class/net lists its links.
    if libc.umount2(b"/sys", MNT_DETACH) == 0:
        mount("sysfs", "/sys", "sysfs", 0)
    for op in spec["mounts"]:
        if op[0] == "bind":
            mount(op[1], op[2], None, MS_BIND)
        else:
            _, lower, upper, work = op
            opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
            mount("overlay", lower, "overlay", 0, opts)
    os.chdir("/")
    os.execve(spec["exe"], spec["argv"], spec["env"])
except BaseException as e:
    os.write(status_fd, f"{type(e).__name__}: {e}".encode())
    os._exit(1)
"""
