"""The tether config model: typed, validated, read from mirrord-shaped files.

This module owns the meaning of every key a user can write in a config file.
tether reads the incumbent's (mirrord's) JSON schema as it is, so a team's
`.mirrord/*.json` works unchanged. Three outcomes exist for a key:

* acted on: parsed into the dataclasses below and used by tether;
* accepted: part of mirrord's schema but not used by tether; it is type-checked
  lightly and listed in `LoadedConfig.unused`, which `report()` turns into one
  line (`accepted, not used by tether: <path>, <path>`);
* rejected: anything else (typos included), reported in `ConfigError` with a
  did-you-mean hint.

Every problem in a file is collected before raising, each one naming its JSON
path (`feature.network.incoming.mode: 'stael' is not one of mirror, steal, off`).

The module is pure apart from reading the file given to `load_config`.
Regular expressions are written in mirrord's (Rust regex) dialect; use
`compile_pattern` and `python_replacement` to turn them into Python ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast

IncomingMode: TypeAlias = Literal["mirror", "steal", "off"]
FsMode: TypeAlias = Literal["read", "write", "local", "localwithoverrides"]
ConcurrentSteal: TypeAlias = Literal["abort", "continue", "override"]
Protocol: TypeAlias = Literal["tcp", "udp"]
FilterKind: TypeAlias = Literal["remote", "local"]
HttpFilterKind: TypeAlias = Literal["path", "header", "method", "all_of", "any_of"]
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

INCOMING_MODES: tuple[IncomingMode, ...] = ("mirror", "steal", "off")
FS_MODES: tuple[FsMode, ...] = ("read", "write", "local", "localwithoverrides")
CONCURRENT_STEAL: tuple[ConcurrentSteal, ...] = ("abort", "continue", "override")
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# Target types as written in a path ("deployment/x") and in mirrord's object
# form ({"deployment": "x"}). `process/<pid>` is tether's own (no Kubernetes).
TARGET_KINDS: dict[str, str] = {
    "pod": "pod",
    "deployment": "deployment",
    "rollout": "rollout",
    "job": "job",
    "cronjob": "cron_job",
    "statefulset": "stateful_set",
    "service": "service",
    "replicaset": "replica_set",
    "process": "process",
}
_TARGET_OBJECT_KEYS = {v: k for k, v in TARGET_KINDS.items() if k != "process"}

DEFAULT_CONFIG_PATHS = (
    ".tether/tether.json",
    ".tether/tether.yaml",
    ".tether/tether.yml",
    ".tether/tether.toml",
)


class ConfigError(Exception):
    """A config could not be read or is invalid; `problems` lists every issue."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"invalid config {self.source}" if self.source else "invalid config"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


# --------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class TargetConfig:
    """What the local process runs "inside": None path means targetless."""

    path: str | None = None
    namespace: str | None = None
    kind: str | None = None
    name: str | None = None
    container: str | None = None

    @property
    def targetless(self) -> bool:
        return self.path is None

    @property
    def pid(self) -> int | None:
        """The process id of a `process/<pid>` target."""
        if self.kind == "process" and self.name is not None:
            return int(self.name)
        return None


@dataclass(frozen=True)
class AgentConfig:
    """How the agent is started next to the target (Kubernetes targets)."""

    namespace: str | None = None  # None: the target's namespace
    image: str | None = None  # None: tether's own agent image
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    ttl: int = 1
    startup_timeout: int = 60
    communication_timeout: int = 30
    tolerations: tuple[Mapping[str, Any], ...] | None = None  # None: default
    resources: Mapping[str, Any] | None = None  # None: default
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    priority_class: str | None = None
    privileged: bool = False
    disabled_capabilities: tuple[str, ...] = ()
    ephemeral: bool = False
    log_level: str = "info"
    json_log: bool = False


@dataclass(frozen=True)
class EnvConfig:
    """Which of the target's environment variables the local process gets.

    include/exclude/unset are glob patterns (`*`, `?`); mapping is an ordered
    `name regex -> value` table (see `tether.environment.compute_env`).
    """

    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    override: Mapping[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    env_file: str | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FsConfig:
    """Which files are read from the target. Patterns are case-insensitive
    mirrord regexes; mapping is `regex -> replacement` in mirrord syntax."""

    mode: FsMode = "read"
    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    local: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()
    mapping: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpFilter:
    """A request filter tree: leaves match one part of a request, inner nodes
    combine children. `path` and `header` patterns are case-insensitive
    regexes searched in the path (with and without query) or in each
    `Name: value` header line; `method` is a case-insensitive exact match."""

    kind: HttpFilterKind
    pattern: str | None = None
    children: tuple[HttpFilter, ...] = ()

    def compiled(self) -> re.Pattern[str]:
        """The leaf's pattern as a Python regex (method filters match exactly)."""
        if self.pattern is None:
            raise ValueError(f"a {self.kind} filter has no pattern")
        if self.kind == "method":
            return re.compile(re.escape(self.pattern), re.IGNORECASE)
        return compile_pattern(self.pattern, ignore_case=True)


TlsDeliveryProtocol: TypeAlias = Literal["tcp", "tls"]
ALPN_PROTOCOLS = ("h2", "http/1.1", "http/1.0")


@dataclass(frozen=True)
class TlsClientVerification:
    """mTLS targets: the agent asks clients for a certificate signed by `trust_roots`
    (paths in the target); `allow_anonymous` lets clients without one through."""

    trust_roots: tuple[str, ...]
    allow_anonymous: bool = False


@dataclass(frozen=True)
class TlsCertPair:
    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class TlsStealPort:
    """tether extension: a port the application serves with TLS; the agent terminates
    it with the target's own certificate and key (paths in the target's filesystem)."""

    port: int
    cert_pem: str
    key_pem: str
    alpn_protocols: tuple[str, ...] = ("h2", "http/1.1")
    client_verification: TlsClientVerification | None = None
    app_client_cert: TlsCertPair | None = None  # what the agent shows an mTLS app


@dataclass(frozen=True)
class TlsDelivery:
    """How stolen TLS traffic reaches the local program: decrypted (`tcp`) or over a
    new TLS connection (`tls`) trusting `trust_roots` / `server_cert` (paths on the
    developer's machine; neither: the target's own certificate)."""

    protocol: TlsDeliveryProtocol = "tls"
    trust_roots: tuple[str, ...] = ()
    server_cert: str | None = None
    server_name: str | None = None  # None: the client's SNI


@dataclass(frozen=True)
class IncomingConfig:
    """Traffic that reaches the target: mirrored, stolen, or left alone."""

    mode: IncomingMode = "mirror"
    http_filter: HttpFilter | None = None
    http_filter_ports: tuple[int, ...] | None = None  # None: every port
    ports: tuple[int, ...] | None = None  # None: every port the app listens on
    ignore_ports: tuple[int, ...] = ()
    port_mapping: tuple[tuple[int, int], ...] = ()  # (local, remote)
    listen_ports: tuple[tuple[int, int], ...] = ()  # (remote, local listen)
    ignore_localhost: bool = False
    on_concurrent_steal: ConcurrentSteal = "abort"
    shadow: bool = False  # tether extension: mirror compares target and local answers
    tls_steal: tuple[TlsStealPort, ...] = ()  # tether extension: HTTPS filtered in the agent
    tls_delivery: TlsDelivery = field(default_factory=TlsDelivery)

    def tls_port(self, port: int) -> tuple[int, TlsStealPort] | None:
        """The `tls_steal` entry of `port` and its index (for messages), if any."""
        for i, entry in enumerate(self.tls_steal):
            if entry.port == port:
                return i, entry
        return None


@dataclass(frozen=True)
class AddressFilter:
    """One parsed entry of an outgoing or DNS filter.

    `raw` is the text as written; `host` is a lower-case name; `network` an
    address (as a /32 or /128) or subnet; None fields match anything.
    """

    raw: str
    protocol: Protocol | None = None
    host: str | None = None
    network: Network | None = None
    port: int | None = None


@dataclass(frozen=True)
class TrafficFilter:
    """`remote`: only matching traffic goes through the target; `local`: only
    matching traffic stays local."""

    kind: FilterKind
    entries: tuple[AddressFilter, ...]


@dataclass(frozen=True)
class OutgoingConfig:
    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    unix_streams: tuple[str, ...] = ()  # regexes of socket paths to connect remotely
    filter: TrafficFilter | None = None


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = True
    filter: TrafficFilter | None = None


@dataclass(frozen=True)
class NetworkConfig:
    incoming: IncomingConfig = field(default_factory=IncomingConfig)
    outgoing: OutgoingConfig = field(default_factory=OutgoingConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    # None: tether handles IPv6 like IPv4 (mirrord needs ipv6: true for that); False:
    # IPv6 connections stay on this machine, as in mirrord by default (see _no_ipv6).
    ipv6: bool | None = None


@dataclass(frozen=True)
class FeatureConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    fs: FsConfig = field(default_factory=FsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    hostname: bool = True  # gethostname() answers the target's hostname


@dataclass(frozen=True)
class Config:
    target: TargetConfig = field(default_factory=TargetConfig)
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    skip_processes: tuple[str, ...] = ()
    skip_build_tools: bool = True
    skip_extra_build_tools: tuple[str, ...] = ()
    kubeconfig: str | None = None
    kube_context: str | None = None
    accept_invalid_certificates: bool | None = None  # None: as the kubeconfig says


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: list[str]
    source: str | None = None  # the file read, None for defaults / parse_config
    unused: list[str] = field(default_factory=list)  # JSON paths accepted but not acted on

    def report(self) -> list[str]:
        """What to tell the user at start and in verify-config: every warning, and one
        line naming every key tether accepted but does not act on."""
        lines = list(self.warnings)
        if self.unused:
            lines.append("accepted, not used by tether: " + ", ".join(self.unused))
        return lines


# --------------------------------------------------------------------------
# mirrord (Rust) regex dialect -> Python

_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?![=!])")
_RUST_REPL = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z0-9_]+)|\\")


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile a mirrord regex with Python's `re` (`(?<name>..)` groups allowed)."""
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile(_NAMED_GROUP.sub("(?P<", pattern), flags)


def python_replacement(replacement: str) -> str:
    """Turn a Rust `Regex::replace` template (`$1`, `$name`, `${name}`, `$$`)
    into one for Python's `re.sub`."""

    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "$$":
            return "$"
        if text == "\\":
            return "\\\\"
        name = m.group(1) if m.group(1) is not None else m.group(2)
        return f"\\g<{name}>"

    return _RUST_REPL.sub(sub, replacement)


# --------------------------------------------------------------------------
# Address filters: [tcp://|udp://][name|address|subnet/mask][:port]

_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_FILTER_SYNTAX = "[tcp://|udp://][name|address|subnet/mask][:port]"
_DNS_FILTER_SYNTAX = "[name|address|subnet/mask][:port]"


def _parse_port(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid port {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1..65535)")
    return port


def _parse_host(text: str, *, bracketed: bool) -> tuple[str | None, Network | None]:
    if "/" in text:
        try:
            return None, ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"invalid subnet {text!r}") from None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if bracketed or ":" in text:
            raise ValueError(f"invalid IPv6 address {text!r}") from None
        labels = text.rstrip(".").split(".")
        if labels[-1].isdigit():
            raise ValueError(f"invalid IPv4 address {text!r}") from None
        if len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"invalid host name {text!r}") from None
        return text.rstrip(".").lower(), None
    return None, ipaddress.ip_network(address)


def parse_address_filter(text: str, *, allow_protocol: bool = True) -> AddressFilter:
    """Parse one filter entry; raise ValueError naming what is wrong with it."""
    rest = text.strip()
    if not rest:
        raise ValueError("empty entry")
    protocol: Protocol | None = None
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if not allow_protocol:
            raise ValueError(f"a protocol ({scheme}://) is not allowed here")
        lowered = scheme.lower()
        if lowered not in ("tcp", "udp"):
            raise ValueError(f"unknown protocol {scheme!r} (use tcp:// or udp://)")
        protocol = cast(Protocol, lowered)
    host_text, port_text, bracketed = rest, None, False
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host_text, tail, bracketed = rest[1:end], rest[end + 1 :], True
        if not host_text:
            raise ValueError("empty IPv6 address in brackets")
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"unexpected {tail!r} after ']'")
            port_text = tail[1:]
    elif rest.count(":") == 1:
        host_text, port_text = rest.split(":")
    port = _parse_port(port_text) if port_text is not None else None
    host, network = (
        _parse_host(host_text, bracketed=bracketed) if host_text else (None, None)
    )
    if bracketed and network is not None and network.version != 6:
        raise ValueError("brackets are only for IPv6 addresses")
    if protocol is None and host is None and network is None and port is None:
        raise ValueError("empty entry")
    return AddressFilter(
        raw=text, protocol=protocol, host=host, network=network, port=port
    )


# --------------------------------------------------------------------------
# Validation machinery


class _Ctx:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.unused: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '<top level>'}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")


_Check: TypeAlias = Callable[[_Ctx, Any, str], object]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _type_error(ctx: _Ctx, path: str, expected: str, value: Any) -> None:
    ctx.error(path, f"expected {expected}, got {_describe(value)}")


def _bool(ctx: _Ctx, value: Any, path: str) -> bool | None:
    if isinstance(value, bool):
        return value
    _type_error(ctx, path, "a boolean", value)
    return None


def _str(ctx: _Ctx, value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return value
    _type_error(ctx, path, "a string", value)
    return None


def _int(
    ctx: _Ctx, value: Any, path: str, lo: int = 0, hi: int | None = None
) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        _type_error(ctx, path, "an integer", value)
        return None
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        ctx.error(path, f"{value} is out of range ({bound})")
        return None
    return value


def _port(ctx: _Ctx, value: Any, path: str) -> int | None:
    return _int(ctx, value, path, 0, 65535)


def _object(ctx: _Ctx, value: Any, path: str) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    _type_error(ctx, path, "an object", value)
    return None


def _list(ctx: _Ctx, value: Any, path: str) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    _type_error(ctx, path, "a list", value)
    return None


def _strings(
    ctx: _Ctx, value: Any, path: str, *, split: bool = False
) -> tuple[str, ...]:
    """mirrord's VecOrSingle: one string or a list of strings. With `split`,
    a single string is `;`-separated (as mirrord reads env include/exclude)."""
    if isinstance(value, str):
        items = value.split(";") if split else [value]
        return tuple(s.strip() for s in items if s.strip())
    if isinstance(value, list | tuple):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                _type_error(ctx, f"{path}[{i}]", "a string", item)
        return tuple(out)
    _type_error(ctx, path, "a string or a list of strings", value)
    return ()


def _str_map(ctx: _Ctx, value: Any, path: str) -> dict[str, str]:
    obj = _object(ctx, value, path)
    out: dict[str, str] = {}
    for key, item in (obj or {}).items():
        if isinstance(item, str):
            out[str(key)] = item
        else:
            _type_error(ctx, _join(path, str(key)), "a string", item)
    return out


def _enum(ctx: _Ctx, value: Any, path: str, choices: Collection[str]) -> str | None:
    if not isinstance(value, str):
        _type_error(ctx, path, "a string", value)
        return None
    if value not in choices:
        ctx.error(path, f"{value!r} is not one of {', '.join(choices)}")
        return None
    return value


def _regex(
    ctx: _Ctx, value: Any, path: str, *, ignore_case: bool = False
) -> str | None:
    text = _str(ctx, value, path)
    if text is None:
        return None
    try:
        compile_pattern(text, ignore_case=ignore_case)
    except re.error as exc:
        ctx.error(path, f"invalid regular expression: {exc}")
        return None
    return text


def _regexes(
    ctx: _Ctx, value: Any, path: str, *, ignore_case: bool = False
) -> tuple[str, ...]:
    items = _strings(ctx, value, path)
    several = isinstance(value, list | tuple)
    out = []
    for i, item in enumerate(items):
        checked = _regex(
            ctx, item, f"{path}[{i}]" if several else path, ignore_case=ignore_case
        )
        if checked is not None:
            out.append(checked)
    return tuple(out)


def _regex_map(
    ctx: _Ctx, value: Any, path: str, *, ignore_case: bool = False
) -> dict[str, str]:
    out = _str_map(ctx, value, path)
    for pattern in list(out):
        if _regex(ctx, pattern, _join(path, pattern), ignore_case=ignore_case) is None:
            del out[pattern]
    return out


def _any(ctx: _Ctx, value: Any, path: str) -> object:
    return value


def _bool_or_object(ctx: _Ctx, value: Any, path: str) -> object:
    if not isinstance(value, bool | Mapping):
        _type_error(ctx, path, "a boolean or an object", value)
    return value


def _fields(
    ctx: _Ctx,
    value: Any,
    path: str,
    acted: Collection[str],
    accepted: Mapping[str, _Check] | None = None,
) -> dict[str, Any] | None:
    """Check an object's keys: unknown keys are errors (with a did-you-mean),
    accepted-but-unused keys are type-checked and warned about. Returns the
    acted-on keys whose value is not null (null means "the default")."""
    obj = _object(ctx, value, path)
    if obj is None:
        return None
    accepted = accepted or {}
    out: dict[str, Any] = {}
    known = list(acted) + list(accepted)
    for raw_key, item in obj.items():
        key = str(raw_key)
        key_path = _join(path, key)
        if key in acted:
            if item is not None:
                out[key] = item
        elif key in accepted:
            if item is not None:
                accepted[key](ctx, item, key_path)
                ctx.unused.append(key_path)
        elif key == "$schema" and not path:
            continue  # editors' schema hint
        else:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                ctx.error(key_path, f"unknown key (did you mean {close[0]!r}?)")
            else:
                ctx.error(
                    key_path,
                    f"unknown key (expected one of: {', '.join(sorted(known))})",
                )
    return out


# --------------------------------------------------------------------------
# Sections


def _target_path(ctx: _Ctx, text: str, path: str) -> TargetConfig | None:
    """`<type>/<name>[/container/<container>]`, or `targetless`."""
    if text == "targetless":
        return TargetConfig()
    parts = text.split("/")
    example = (
        "expected <type>/<name>[/container/<container>], e.g. deployment/silly-demo"
    )
    if (
        len(parts) not in (2, 4)
        or (len(parts) == 4 and parts[2] != "container")
        or not all(parts)
    ):
        ctx.error(path, f"{text!r} is not a target path; {example}")
        return None
    kind, name = parts[0], parts[1]
    container = parts[3] if len(parts) == 4 else None
    if kind not in TARGET_KINDS:
        close = difflib.get_close_matches(kind, TARGET_KINDS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        ctx.error(
            path,
            f"unknown target type {kind!r}{hint}; expected one of {', '.join(TARGET_KINDS)}",
        )
        return None
    if kind == "process":
        if not name.isdigit():
            ctx.error(
                path, f"{text!r}: a process target is process/<pid>, got pid {name!r}"
            )
            return None
        if container is not None:
            ctx.error(path, f"{text!r}: a process target has no container")
            return None
    return TargetConfig(path=text, kind=kind, name=name, container=container)


def _target_object(ctx: _Ctx, obj: Mapping[str, Any], path: str) -> TargetConfig | None:
    """mirrord's object form: {"deployment": "x", "container": "y"}."""
    kinds = [k for k in obj if k in _TARGET_OBJECT_KEYS]
    if len(kinds) != 1:
        ctx.error(path, f"set exactly one of {', '.join(_TARGET_OBJECT_KEYS)}")
        return None
    fields = _fields(ctx, obj, path, (kinds[0], "container"))
    if fields is None:
        return None
    name = _str(ctx, fields.get(kinds[0]), _join(path, kinds[0]))
    container = fields.get("container")
    if container is not None:
        container = _str(ctx, container, _join(path, "container"))
    if name is None:
        return None
    kind = _TARGET_OBJECT_KEYS[kinds[0]]
    text = f"{kind}/{name}" + (f"/container/{container}" if container else "")
    return _target_path(ctx, text, path)


def _target_path_value(ctx: _Ctx, value: Any, path: str) -> TargetConfig | None:
    if isinstance(value, str):
        return _target_path(ctx, value, path)
    if isinstance(value, Mapping):
        return _target_object(ctx, value, path)
    _type_error(ctx, path, "a target path string or object", value)
    return None


def _target(ctx: _Ctx, value: Any, path: str) -> TargetConfig:
    if isinstance(value, Mapping) and any(k in _TARGET_OBJECT_KEYS for k in value):
        return _target_object(ctx, value, path) or TargetConfig()
    if not isinstance(value, Mapping):
        return _target_path_value(ctx, value, path) or TargetConfig()
    fields = _fields(ctx, value, path, ("path", "namespace")) or {}
    target = TargetConfig()
    if "path" in fields:
        target = _target_path_value(ctx, fields["path"], _join(path, "path")) or target
    if "namespace" in fields:
        namespace = _str(ctx, fields["namespace"], _join(path, "namespace"))
        target = dataclasses.replace(target, namespace=namespace)
    return target


def _agent_image(ctx: _Ctx, value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return value
    fields = _fields(ctx, value, path, ("registry", "tag"))
    if fields is None:
        return None
    if "registry" not in fields:
        ctx.error(
            _join(path, "registry"),
            "required (tether has no default registry to add a tag to)",
        )
        return None
    registry = _str(ctx, fields["registry"], _join(path, "registry"))
    tag = _str(ctx, fields.get("tag", "latest"), _join(path, "tag"))
    return f"{registry}:{tag}" if registry and tag else None


def _pull_secrets(ctx: _Ctx, value: Any, path: str) -> tuple[str, ...]:
    names = []
    for i, item in enumerate(_list(ctx, value, path) or []):
        fields = _fields(ctx, item, f"{path}[{i}]", ("name",))
        if fields is None:
            continue
        if "name" not in fields:
            ctx.error(f"{path}[{i}]", 'missing \'name\' (write {"name": "<secret>"})')
            continue
        name = _str(ctx, fields["name"], f"{path}[{i}].name")
        if name:
            names.append(name)
    return tuple(names)


_AGENT_ACCEPTED: dict[str, _Check] = {
    "check_out_of_pods": _bool,
    "clean_iptables_on_start": _bool,
    "disable_mesh_sidecar_injection": _bool,
    "dns": _object,
    "exclude_from_mesh": _bool,
    "flush_connections": _bool,
    "inject_headers": _bool,
    "jaq_time_limit": _int,
    "max_body_buffer_size": _int,
    "max_body_buffer_timeout": _int,
    "metrics": _str,
    "nftables": _bool,
    "security_context": _object,
    "network_interface": _str,
}

_AGENT_STR = ("namespace", "service_account", "priority_class", "log_level")
_AGENT_BOOL = ("privileged", "ephemeral", "json_log")
_AGENT_INT = {"ttl": 65535, "startup_timeout": None, "communication_timeout": 65535}
_AGENT_MAPS = ("labels", "annotations", "node_selector")
_AGENT_ACTED = (
    *_AGENT_STR,
    *_AGENT_BOOL,
    *_AGENT_INT,
    *_AGENT_MAPS,
    "image",
    "image_pull_policy",
    "image_pull_secrets",
    "tolerations",
    "resources",
    "disabled_capabilities",
)


def _agent(ctx: _Ctx, value: Any, path: str) -> AgentConfig:
    fields = _fields(ctx, value, path, _AGENT_ACTED, _AGENT_ACCEPTED) or {}
    kw: dict[str, Any] = {}
    for key, item in fields.items():
        p = _join(path, key)
        got: Any = None
        if key in _AGENT_STR:
            got = _str(ctx, item, p)
        elif key in _AGENT_BOOL:
            got = _bool(ctx, item, p)
        elif key in _AGENT_INT:
            got = _int(ctx, item, p, 0, _AGENT_INT[key])
        elif key in _AGENT_MAPS:
            got = _str_map(ctx, item, p)
        elif key == "image":
            got = _agent_image(ctx, item, p)
        elif key == "image_pull_policy":
            got = _enum(ctx, item, p, IMAGE_PULL_POLICIES)
        elif key == "image_pull_secrets":
            got = _pull_secrets(ctx, item, p)
        elif key == "tolerations":
            items = _list(ctx, item, p)
            if items is not None:
                got = tuple(
                    dict(obj)
                    for i, t in enumerate(items)
                    if (obj := _object(ctx, t, f"{p}[{i}]")) is not None
                )
        elif key == "resources":
            obj = _object(ctx, item, p)
            got = dict(obj) if obj is not None else None
        elif key == "disabled_capabilities":
            got = _strings(ctx, item, p)
        if got is not None:
            kw[key] = got
    return AgentConfig(**kw)


_ENV_ACTED = ("include", "exclude", "override", "unset", "env_file", "mapping")


def _env(ctx: _Ctx, value: Any, path: str) -> EnvConfig:
    if isinstance(value, bool):
        return EnvConfig(enabled=value)
    fields = _fields(ctx, value, path, _ENV_ACTED, {"load_from_process": _bool}) or {}
    kw: dict[str, Any] = {}
    for key in ("include", "exclude", "unset"):
        if key in fields:
            kw[key] = _strings(ctx, fields[key], _join(path, key), split=True)
    if "override" in fields:
        kw["override"] = _str_map(ctx, fields["override"], _join(path, "override"))
    if "mapping" in fields:
        kw["mapping"] = _regex_map(ctx, fields["mapping"], _join(path, "mapping"))
    if "env_file" in fields:
        kw["env_file"] = _str(ctx, fields["env_file"], _join(path, "env_file"))
    return EnvConfig(**kw)


def _fs(ctx: _Ctx, value: Any, path: str) -> FsConfig:
    if isinstance(value, bool):
        return FsConfig(mode="read" if value else "local")
    if isinstance(value, str):
        mode = _enum(ctx, value, path, FS_MODES)
        return FsConfig(mode=cast(FsMode, mode)) if mode else FsConfig()
    acted = ("mode", "read_write", "read_only", "local", "not_found", "mapping")
    fields = _fields(ctx, value, path, acted, {"readonly_file_buffer": _int}) or {}
    kw: dict[str, Any] = {}
    if "mode" in fields:
        mode = _enum(ctx, fields["mode"], _join(path, "mode"), FS_MODES)
        if mode:
            kw["mode"] = mode
    for key in ("read_write", "read_only", "local", "not_found"):
        if key in fields:
            kw[key] = _regexes(ctx, fields[key], _join(path, key), ignore_case=True)
    if "mapping" in fields:
        kw["mapping"] = _regex_map(ctx, fields["mapping"], _join(path, "mapping"))
    return FsConfig(**kw)


_HTTP_LEAVES: dict[str, HttpFilterKind] = {
    "header_filter": "header",
    "path_filter": "path",
    "method_filter": "method",
}
_HTTP_UNSUPPORTED = ("body_filter", "header_filter_jq")
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _http_leaf(
    ctx: _Ctx, kind: HttpFilterKind, value: Any, path: str
) -> HttpFilter | None:
    if kind == "method":
        text = _str(ctx, value, path)
        if text is None:
            return None
        if not _METHOD.match(text):
            ctx.error(path, f"{text!r} is not an HTTP method")
            return None
        return HttpFilter("method", text.upper())
    pattern = _filter_regex(ctx, value, path)
    return HttpFilter(kind, pattern) if pattern is not None else None


def _filter_regex(ctx: _Ctx, value: Any, path: str) -> str | None:
    """An http_filter regex: the agent runs it on RE2 (linear time), so it must be one
    RE2 accepts; Python's ``re`` accepting it is not enough."""
    text = _str(ctx, value, path)
    if text is None:
        return None
    from tether.http.filters import compile_regex  # RE2: only configs with filters pay

    try:
        compile_regex(text)
    except ValueError as exc:
        ctx.error(path, f"invalid regular expression: {exc}")
        return None
    return text


def _unsupported_filter(ctx: _Ctx, path: str) -> None:
    ctx.error(
        path,
        "not supported by tether (a filter tether cannot evaluate would let every "
        "request through); use a path, header or method filter",
    )


def _http_inner(ctx: _Ctx, value: Any, path: str) -> HttpFilter | None:
    obj = _object(ctx, value, path)
    if obj is None:
        return None
    if "body" in obj or "query" in obj:
        _unsupported_filter(ctx, path)
        return None
    fields = _fields(ctx, obj, path, ("header", "path", "method"))
    if fields is None:
        return None
    if len(fields) != 1:
        ctx.error(path, "set exactly one of header, path, method")
        return None
    ((key, item),) = fields.items()
    return _http_leaf(ctx, cast(HttpFilterKind, key), item, _join(path, key))


def _http_filter(
    ctx: _Ctx, value: Any, path: str
) -> tuple[HttpFilter | None, tuple[int, ...] | None]:
    if isinstance(value, bool):
        return None, None
    obj = _object(ctx, value, path)
    if obj is None:
        return None, None
    for key in _HTTP_UNSUPPORTED:
        if obj.get(key) is not None:
            _unsupported_filter(ctx, _join(path, key))
    acted = (*_HTTP_LEAVES, "all_of", "any_of", "ports")
    fields = _fields(
        ctx, {k: v for k, v in obj.items() if k not in _HTTP_UNSUPPORTED}, path, acted
    )
    fields = fields or {}
    ports: tuple[int, ...] | None = None
    if "ports" in fields:
        raw = fields["ports"]
        items = raw if isinstance(raw, list | tuple) else [raw]
        several = isinstance(raw, list | tuple)
        ports = tuple(
            p
            for i, item in enumerate(items)
            if (
                p := _port(
                    ctx, item, _join(path, "ports") + (f"[{i}]" if several else "")
                )
            )
            is not None
        )
    chosen = [k for k in fields if k != "ports"]
    if len(chosen) > 1:
        ctx.error(
            path, f"set only one of {', '.join(acted[:-1])} (got {', '.join(chosen)})"
        )
        return None, ports
    if not chosen:
        if ports is not None:
            ctx.warn(_join(path, "ports"), "no filter is set, so ports has no effect")
        return None, ports
    key = chosen[0]
    key_path = _join(path, key)
    if key in _HTTP_LEAVES:
        return _http_leaf(ctx, _HTTP_LEAVES[key], fields[key], key_path), ports
    inner = _list(ctx, fields[key], key_path)
    if inner is None:
        return None, ports
    if not inner:
        ctx.error(key_path, "cannot be an empty list")
        return None, ports
    children = [
        _http_inner(ctx, item, f"{key_path}[{i}]") for i, item in enumerate(inner)
    ]
    if any(c is None for c in children):
        return None, ports
    return HttpFilter(
        cast(HttpFilterKind, key), None, tuple(cast(list[HttpFilter], children))
    ), ports


def _port_list(ctx: _Ctx, value: Any, path: str) -> tuple[int, ...]:
    items = _list(ctx, value, path) or []
    return tuple(
        p
        for i, item in enumerate(items)
        if (p := _port(ctx, item, f"{path}[{i}]")) is not None
    )


def _port_pairs(ctx: _Ctx, value: Any, path: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, item in enumerate(_list(ctx, value, path) or []):
        p = f"{path}[{i}]"
        if not isinstance(item, list | tuple) or len(item) != 2:
            _type_error(ctx, p, "a pair of ports like [8080, 80]", item)
            continue
        a, b = _port(ctx, item[0], f"{p}[0]"), _port(ctx, item[1], f"{p}[1]")
        if a is not None and b is not None:
            pairs.append((a, b))
    return tuple(pairs)


_INCOMING_ACTED = (
    "mode",
    "http_filter",
    "ports",
    "ignore_ports",
    "port_mapping",
    "listen_ports",
    "ignore_localhost",
    "on_concurrent_steal",
    "shadow",
    "tls_steal",
    "tls_delivery",
    "https_delivery",
)


def _target_file(ctx: _Ctx, value: Any, path: str) -> str | None:
    text = _str(ctx, value, path)
    if text is not None and not text.startswith("/"):
        ctx.error(path, f"{text!r} is not an absolute path (a file in the target's "
                        "filesystem, e.g. /etc/tls/tls.crt)")
        return None
    return text


def _required(ctx: _Ctx, fields: Mapping[str, Any], path: str, key: str) -> Any:
    if key not in fields:
        ctx.error(_join(path, key), "missing (required)")
    return fields.get(key)


def _cert_pair(ctx: _Ctx, value: Any, path: str) -> TlsCertPair | None:
    fields = _fields(ctx, value, path, ("cert_pem", "key_pem"))
    if fields is None:
        return None
    cert = _target_file(ctx, _required(ctx, fields, path, "cert_pem"), _join(path, "cert_pem"))
    key = _target_file(ctx, _required(ctx, fields, path, "key_pem"), _join(path, "key_pem"))
    return TlsCertPair(cert, key) if cert and key else None


def _tls_port(ctx: _Ctx, value: Any, path: str) -> TlsStealPort | None:
    acted = ("port", "cert_pem", "key_pem", "alpn_protocols", "client_verification",
             "app_client_cert")
    fields = _fields(ctx, value, path, acted)
    if fields is None:
        return None
    port = _required(ctx, fields, path, "port")
    port = _int(ctx, port, _join(path, "port"), 1, 65535) if port is not None else None
    cert = _required(ctx, fields, path, "cert_pem")
    cert = _target_file(ctx, cert, _join(path, "cert_pem")) if cert is not None else None
    key = _required(ctx, fields, path, "key_pem")
    key = _target_file(ctx, key, _join(path, "key_pem")) if key is not None else None
    kw: dict[str, Any] = {}
    if "alpn_protocols" in fields:
        p = _join(path, "alpn_protocols")
        protos = _strings(ctx, fields["alpn_protocols"], p)
        for i, proto in enumerate(protos):
            if proto not in ALPN_PROTOCOLS:
                ctx.error(f"{p}[{i}]", f"{proto!r} is not one of {', '.join(ALPN_PROTOCOLS)} "
                                       "(the agent filters HTTP)")
        kw["alpn_protocols"] = tuple(protos)
    if "client_verification" in fields:
        p = _join(path, "client_verification")
        cv = _fields(ctx, fields["client_verification"], p, ("trust_roots", "allow_anonymous"))
        if cv is not None:
            roots = tuple(r for i, item in enumerate(
                _list(ctx, _required(ctx, cv, p, "trust_roots") or [],
                      _join(p, "trust_roots")) or [])
                if (r := _target_file(ctx, item, f"{_join(p, 'trust_roots')}[{i}]")))
            if "trust_roots" in cv and not roots:
                ctx.error(_join(p, "trust_roots"), "cannot be empty (list the CA certificates "
                                                   "the application trusts for its clients)")
            anon = _bool(ctx, cv.get("allow_anonymous", False), _join(p, "allow_anonymous"))
            kw["client_verification"] = TlsClientVerification(roots, bool(anon))
    if "app_client_cert" in fields:
        kw["app_client_cert"] = _cert_pair(ctx, fields["app_client_cert"],
                                           _join(path, "app_client_cert"))
    if port is None or cert is None or key is None:
        return None
    return TlsStealPort(port, cert, key, **kw)


def _tls_steal(ctx: _Ctx, value: Any, path: str) -> tuple[TlsStealPort, ...]:
    fields = _fields(ctx, value, path, ("ports",))
    if fields is None:
        return ()
    p = _join(path, "ports")
    items = _list(ctx, _required(ctx, fields, path, "ports") or [], p) or []
    out: list[TlsStealPort] = []
    for i, item in enumerate(items):
        entry = _tls_port(ctx, item, f"{p}[{i}]")
        if entry is None:
            continue
        if any(e.port == entry.port for e in out):
            ctx.error(f"{p}[{i}].port", f"port {entry.port} is listed twice")
            continue
        out.append(entry)
    return tuple(out)


def _tls_delivery(ctx: _Ctx, value: Any, path: str) -> TlsDelivery:
    fields = _fields(ctx, value, path, ("protocol", "trust_roots", "server_cert",
                                        "server_name"))
    if fields is None:
        return TlsDelivery()
    kw: dict[str, Any] = {}
    if "protocol" in fields:
        got = _enum(ctx, fields["protocol"], _join(path, "protocol"), ("tcp", "tls"))
        if got:
            kw["protocol"] = got
    if "trust_roots" in fields:
        kw["trust_roots"] = _strings(ctx, fields["trust_roots"], _join(path, "trust_roots"))
    for key in ("server_cert", "server_name"):
        if key in fields:
            kw[key] = _str(ctx, fields[key], _join(path, key))
    if kw.get("protocol") == "tcp":
        for key in ("trust_roots", "server_cert", "server_name"):
            if kw.get(key):
                ctx.warn(_join(path, key), "has no effect with protocol tcp (the local "
                                           "program gets plain HTTP)")
    return TlsDelivery(**kw)


def _incoming(ctx: _Ctx, value: Any, path: str) -> IncomingConfig:
    if isinstance(value, bool):
        return IncomingConfig(mode="mirror" if value else "off")
    if isinstance(value, str):
        mode = _enum(ctx, value, path, INCOMING_MODES)
        return (
            IncomingConfig(mode=cast(IncomingMode, mode)) if mode else IncomingConfig()
        )
    fields = _fields(ctx, value, path, _INCOMING_ACTED) or {}
    kw: dict[str, Any] = {}
    if "mode" in fields:
        mode = _enum(ctx, fields["mode"], _join(path, "mode"), INCOMING_MODES)
        if mode:
            kw["mode"] = mode
    if "http_filter" in fields:
        kw["http_filter"], kw["http_filter_ports"] = _http_filter(
            ctx, fields["http_filter"], _join(path, "http_filter")
        )
    for key in ("ports", "ignore_ports"):
        if key in fields:
            kw[key] = _port_list(ctx, fields[key], _join(path, key))
    if "ports" in fields and "ignore_ports" in fields:
        ctx.error(path, "set only one of ports, ignore_ports")
    for key in ("port_mapping", "listen_ports"):
        if key in fields:
            kw[key] = _port_pairs(ctx, fields[key], _join(path, key))
    if "ignore_localhost" in fields:
        got = _bool(ctx, fields["ignore_localhost"], _join(path, "ignore_localhost"))
        if got is not None:
            kw["ignore_localhost"] = got
    if "on_concurrent_steal" in fields:
        p = _join(path, "on_concurrent_steal")
        got_mode = _enum(ctx, fields["on_concurrent_steal"], p, CONCURRENT_STEAL)
        if got_mode:
            kw["on_concurrent_steal"] = got_mode
    if "shadow" in fields:
        got = _bool(ctx, fields["shadow"], _join(path, "shadow"))
        if got is not None:
            kw["shadow"] = got
            if got and kw.get("mode", "mirror") != "mirror":
                ctx.error(_join(path, "shadow"),
                          "shadow compares the target's answers with the local program's "
                          "while mirroring: it needs mode mirror")
    if "tls_steal" in fields:
        kw["tls_steal"] = _tls_steal(ctx, fields["tls_steal"], _join(path, "tls_steal"))
        mode = kw.get("mode", "mirror")
        if kw["tls_steal"] and mode == "off":
            ctx.warn(_join(path, "tls_steal"), "has no effect with mode off")
        elif kw["tls_steal"] and mode == "steal" and kw.get("http_filter") is None:
            ctx.warn(_join(path, "tls_steal"),
                     "has no effect without http_filter: a stolen port is taken whole "
                     "(its TLS goes to the local program untouched)")
    if kw.get("tls_steal") and kw.get("shadow"):
        ctx.warn(_join(path, "shadow"), "tls_steal ports are mirrored without comparing "
                                        "answers (shadow covers plain-text ports)")
    if "tls_delivery" in fields and "https_delivery" in fields:
        ctx.error(path, "set only one of tls_delivery, https_delivery (the same setting)")
    for key in ("tls_delivery", "https_delivery"):
        if key in fields:
            kw["tls_delivery"] = _tls_delivery(ctx, fields[key], _join(path, key))
    return IncomingConfig(**kw)


def _traffic_filter(
    ctx: _Ctx, value: Any, path: str, *, dns: bool
) -> TrafficFilter | None:
    fields = _fields(ctx, value, path, ("remote", "local"))
    if fields is None:
        return None
    if len(fields) != 1:
        ctx.error(path, "set exactly one of remote, local")
        return None
    ((kind, raw),) = fields.items()
    kind_path = _join(path, kind)
    several = isinstance(raw, list | tuple)
    entries = []
    for i, text in enumerate(_strings(ctx, raw, kind_path)):
        entry_path = f"{kind_path}[{i}]" if several else kind_path
        try:
            entries.append(parse_address_filter(text, allow_protocol=not dns))
        except ValueError as exc:
            syntax = _DNS_FILTER_SYNTAX if dns else _FILTER_SYNTAX
            ctx.error(
                entry_path, f"{text!r} is not a valid filter: {exc}; expected {syntax}"
            )
    return TrafficFilter(cast(FilterKind, kind), tuple(entries))


def _outgoing(ctx: _Ctx, value: Any, path: str) -> OutgoingConfig:
    if isinstance(value, bool):
        return OutgoingConfig(tcp=value, udp=value)
    if isinstance(value, str):  # mirrord's newer short form
        side = _enum(ctx, value, path, ("remote", "local"))
        return OutgoingConfig(tcp=side != "local", udp=side != "local")
    acted = ("tcp", "udp", "ignore_localhost", "unix_streams", "filter")
    fields = _fields(ctx, value, path, acted) or {}
    kw: dict[str, Any] = {}
    for key in ("tcp", "udp", "ignore_localhost"):
        if (
            key in fields
            and (got := _bool(ctx, fields[key], _join(path, key))) is not None
        ):
            kw[key] = got
    if "unix_streams" in fields:
        kw["unix_streams"] = _regexes(
            ctx, fields["unix_streams"], _join(path, "unix_streams")
        )
    if "filter" in fields:
        kw["filter"] = _traffic_filter(
            ctx, fields["filter"], _join(path, "filter"), dns=False
        )
    return OutgoingConfig(**kw)


def _dns(ctx: _Ctx, value: Any, path: str) -> DnsConfig:
    if isinstance(value, bool):
        return DnsConfig(enabled=value)
    fields = _fields(ctx, value, path, ("enabled", "filter")) or {}
    kw: dict[str, Any] = {}
    if (
        "enabled" in fields
        and (got := _bool(ctx, fields["enabled"], _join(path, "enabled"))) is not None
    ):
        kw["enabled"] = got
    if "filter" in fields:
        kw["filter"] = _traffic_filter(
            ctx, fields["filter"], _join(path, "filter"), dns=True
        )
    return DnsConfig(**kw)


def _network(ctx: _Ctx, value: Any, path: str) -> NetworkConfig:
    if isinstance(value, bool):
        if value:
            return NetworkConfig()
        return NetworkConfig(
            incoming=IncomingConfig(mode="off"),
            outgoing=OutgoingConfig(tcp=False, udp=False),
            dns=DnsConfig(enabled=False),
        )
    fields = _fields(ctx, value, path, ("incoming", "outgoing", "dns", "ipv6")) or {}
    kw: dict[str, Any] = {}
    if "incoming" in fields:
        kw["incoming"] = _incoming(ctx, fields["incoming"], _join(path, "incoming"))
    if "outgoing" in fields:
        kw["outgoing"] = _outgoing(ctx, fields["outgoing"], _join(path, "outgoing"))
    if "dns" in fields:
        kw["dns"] = _dns(ctx, fields["dns"], _join(path, "dns"))
    if (
        "ipv6" in fields
        and (got := _bool(ctx, fields["ipv6"], _join(path, "ipv6"))) is not None
    ):
        kw["ipv6"] = got
        if got is False:
            kw["outgoing"] = _no_ipv6(kw.get("outgoing", OutgoingConfig()))
    return NetworkConfig(**kw)


_ANY_V6 = AddressFilter(raw="::/0", network=ipaddress.ip_network("::/0"))


def _no_ipv6(out: OutgoingConfig) -> OutgoingConfig:
    """`ipv6: false`: outgoing IPv6 stays local, written as an outgoing filter so the
    layer's one decision table applies it (a `local` filter gains ::/0; a `remote` one
    loses its IPv6 entries; no filter becomes `local: ::/0`)."""
    flt = out.filter
    if flt is None:
        flt = TrafficFilter("local", (_ANY_V6,))
    elif flt.kind == "local":
        if _ANY_V6 not in flt.entries:
            flt = TrafficFilter("local", (*flt.entries, _ANY_V6))
    else:
        flt = TrafficFilter("remote", tuple(e for e in flt.entries
                                            if e.network is None or e.network.version == 4))
    return dataclasses.replace(out, filter=flt)


_FEATURE_ACCEPTED: dict[str, _Check] = {
    "copy_target": _bool_or_object,
    "split_queues": _object,
    "db_branches": _list,
    "preview": _object,
    "magic": _object,
}


def _feature(ctx: _Ctx, value: Any, path: str) -> FeatureConfig:
    acted = ("env", "fs", "network", "hostname")
    fields = _fields(ctx, value, path, acted, _FEATURE_ACCEPTED) or {}
    kw: dict[str, Any] = {}
    if "env" in fields:
        kw["env"] = _env(ctx, fields["env"], _join(path, "env"))
    if "fs" in fields:
        kw["fs"] = _fs(ctx, fields["fs"], _join(path, "fs"))
    if "network" in fields:
        kw["network"] = _network(ctx, fields["network"], _join(path, "network"))
    if (
        "hostname" in fields
        and (got := _bool(ctx, fields["hostname"], _join(path, "hostname"))) is not None
    ):
        kw["hostname"] = got
    return FeatureConfig(**kw)


_TOP_ACCEPTED: dict[str, _Check] = {
    "operator": _bool,
    "telemetry": _bool,
    "sip_binaries": _strings,
    "skip_sip": _strings,
    "container": _object,
    "external_proxy": _object,
    "internal_proxy": _object,
    "experimental": _object,
    "ci": _object,
    "api": _bool,
    "baggage": _str,
    "traceparent": _str,
    "profile": _str,
    "startup_retry": _object,
    "use_proxy": _bool,
    "key": _str,
    "connect_tcp": _str,
    "pause": _bool,
}
_TOP_ACTED = (
    "target",
    "feature",
    "agent",
    "skip_processes",
    "skip_build_tools",
    "skip_extra_build_tools",
    "kubeconfig",
    "kube_context",
    "accept_invalid_certificates",
)


# Keys of the model that no part of tether reads yet: parsed and type-checked like the
# others, and reported as accepted-but-unused instead of staying silently valid.
_NOT_ACTED_ON = (
    "agent.log_level",  # the agent logs at TETHER_LOG's level
    "agent.communication_timeout",
)


def _present(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or data.get(part) is None:
            return False
        data = data[part]
    return True


def parse_config(data: Mapping[str, Any]) -> LoadedConfig:
    """Validate already-decoded config data; raise ConfigError with every problem."""
    ctx = _Ctx()
    fields = _fields(ctx, data, "", _TOP_ACTED, _TOP_ACCEPTED) or {}
    kw: dict[str, Any] = {}
    if "target" in fields:
        kw["target"] = _target(ctx, fields["target"], "target")
    if "feature" in fields:
        kw["feature"] = _feature(ctx, fields["feature"], "feature")
    if "agent" in fields:
        kw["agent"] = _agent(ctx, fields["agent"], "agent")
    for key in ("skip_processes", "skip_extra_build_tools"):
        if key in fields:
            kw[key] = _strings(ctx, fields[key], key)
    for key in ("skip_build_tools", "accept_invalid_certificates"):
        if key in fields and (got := _bool(ctx, fields[key], key)) is not None:
            kw[key] = got
    for key in ("kubeconfig", "kube_context"):
        if key in fields and (text := _str(ctx, fields[key], key)) is not None:
            kw[key] = text
    ctx.unused += [p for p in _NOT_ACTED_ON if _present(data, p)]
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return LoadedConfig(config=Config(**kw), warnings=ctx.warnings, unused=ctx.unused)


# --------------------------------------------------------------------------
# Reading files and merging command-line overrides


def _drop_trailing_commas(text: str) -> str:
    """``{"a": 1,}`` -> ``{"a": 1}``; commas inside strings are kept."""
    out: list[str] = []
    in_string = escaped = False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ",":
            rest = text[i + 1:].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(c)
    return "".join(out)


def _decode(path: str, text: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yaml", ".yml"):
        import yaml  # only for YAML files: ~25 ms of every start-up otherwise

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = (
                f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            )
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                [f"{path}: invalid YAML{where}: {problem}"], source=path
            ) from None
    if ext == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: invalid TOML: {exc}"], source=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        try:  # mirrord's own documented examples end objects with a trailing comma
            return json.loads(_drop_trailing_commas(text))
        except json.JSONDecodeError:
            pass
        raise ConfigError(
            [
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ],
            source=path,
        ) from None


# Short forms that the CLI's object-shaped overrides must be able to merge into.
_SHORT_FORMS: dict[tuple[str, ...], str] = {
    ("target",): "path",
    ("feature", "network", "incoming"): "mode",
    ("feature", "fs"): "mode",
}


# Sections written as a boolean, as the object they stand for (for the same reason).
_BOOL_FORMS: dict[tuple[str, ...], Callable[[bool], dict[str, Any]]] = {
    ("feature", "network", "outgoing"): lambda b: {"tcp": b, "udp": b},
    ("feature", "network", "dns"): lambda b: {"enabled": b},
    ("feature", "network", "incoming"): lambda b: {"mode": "mirror" if b else "off"},
    ("feature", "fs"): lambda b: {"mode": "read" if b else "local"},
}


def _merge(base: Any, override: Any, where: tuple[str, ...] = ()) -> Any:
    if not isinstance(override, Mapping):
        return override
    if isinstance(base, str) and where in _SHORT_FORMS:
        base = {_SHORT_FORMS[where]: base}
    if isinstance(base, bool) and where in _BOOL_FORMS:
        base = _BOOL_FORMS[where](base)
    if not isinstance(base, Mapping):
        base = {}
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue  # an option the user did not give
        merged[key] = _merge(merged.get(key), value, (*where, str(key)))
    return merged


def load_config(
    path: str | None, overrides: Mapping[str, Any] | None = None
) -> LoadedConfig:
    """Read a JSON, YAML (.yaml/.yml) or TOML (.toml) config and merge
    `overrides` (command-line options, None values ignored) over it.

    With `path=None`, `.tether/tether.json` (or .yaml/.yml/.toml) in the
    current directory is read if present, else the defaults apply."""
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_PATHS if os.path.isfile(p)), None)
    data: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            )
            raise ConfigError(
                [f"{path}: cannot read the config file: {reason}"], source=path
            ) from None
        from .config_template import TemplateError, has_template, render

        if has_template(text):
            try:
                text = render(text)
            except TemplateError as exc:
                raise ConfigError([f"{path}: {exc}"], source=path) from None
        data = _decode(path, text)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                [
                    f"{path}: the config must be an object at the top level, got {_describe(data)}"
                ],
                source=path,
            )
    if overrides:
        data = _merge(data, overrides)
    try:
        loaded = parse_config(data)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=path) from None
    return dataclasses.replace(loaded, source=path)


# --------------------------------------------------------------------------
# The effective config, for `tether verify-config --print`


def _dump_http_filter(node: HttpFilter) -> dict[str, Any]:
    if node.kind in ("all_of", "any_of"):
        return {node.kind: [{c.kind: c.pattern} for c in node.children]}
    return {f"{node.kind}_filter": node.pattern}


def dump_tls_port(p: TlsStealPort) -> dict[str, Any]:
    """A tls_steal port as its config mapping (also what the agent is sent of it)."""
    out: dict[str, Any] = {"port": p.port, "cert_pem": p.cert_pem, "key_pem": p.key_pem,
                           "alpn_protocols": list(p.alpn_protocols)}
    if p.client_verification is not None:
        out["client_verification"] = {
            "trust_roots": list(p.client_verification.trust_roots),
            "allow_anonymous": p.client_verification.allow_anonymous}
    if p.app_client_cert is not None:
        out["app_client_cert"] = {"cert_pem": p.app_client_cert.cert_pem,
                                  "key_pem": p.app_client_cert.key_pem}
    return out


def _dump_filter(flt: TrafficFilter | None) -> dict[str, Any] | None:
    return {flt.kind: [e.raw for e in flt.entries]} if flt else None


def _ports(ports: tuple[int, ...] | None) -> list[int] | None:
    return list(ports) if ports is not None else None


def dump_effective(config: Config) -> dict[str, Any]:
    """The effective config as a plain JSON-able dict in mirrord's shape;
    `parse_config` reads it back to an equal Config."""
    t, a, f = config.target, config.agent, config.feature
    inc, out, dns = f.network.incoming, f.network.outgoing, f.network.dns
    http: dict[str, Any] | None = None
    if inc.http_filter is not None or inc.http_filter_ports is not None:
        http = _dump_http_filter(inc.http_filter) if inc.http_filter else {}
        if inc.http_filter_ports is not None:
            http["ports"] = list(inc.http_filter_ports)
    env: bool | dict[str, Any] = False
    if f.env.enabled:
        env = {
            "include": list(f.env.include),
            "exclude": list(f.env.exclude),
            "override": dict(f.env.override),
            "unset": list(f.env.unset),
            "env_file": f.env.env_file,
            "mapping": dict(f.env.mapping),
        }
    return {
        "target": {"path": t.path, "namespace": t.namespace},
        "feature": {
            "env": env,
            "fs": {
                "mode": f.fs.mode,
                "read_write": list(f.fs.read_write),
                "read_only": list(f.fs.read_only),
                "local": list(f.fs.local),
                "not_found": list(f.fs.not_found),
                "mapping": dict(f.fs.mapping),
            },
            "network": {
                "incoming": {
                    "mode": inc.mode,
                    "http_filter": http,
                    "ports": _ports(inc.ports),
                    "ignore_ports": list(inc.ignore_ports),
                    "port_mapping": [list(p) for p in inc.port_mapping],
                    "listen_ports": [list(p) for p in inc.listen_ports],
                    "ignore_localhost": inc.ignore_localhost,
                    "on_concurrent_steal": inc.on_concurrent_steal,
                    "shadow": inc.shadow,
                    "tls_steal": {"ports": [dump_tls_port(p) for p in inc.tls_steal]},
                    "tls_delivery": {
                        "protocol": inc.tls_delivery.protocol,
                        "trust_roots": list(inc.tls_delivery.trust_roots),
                        "server_cert": inc.tls_delivery.server_cert,
                        "server_name": inc.tls_delivery.server_name,
                    },
                },
                "outgoing": {
                    "tcp": out.tcp,
                    "udp": out.udp,
                    "ignore_localhost": out.ignore_localhost,
                    "unix_streams": list(out.unix_streams),
                    "filter": _dump_filter(out.filter),
                },
                "dns": {"enabled": dns.enabled, "filter": _dump_filter(dns.filter)},
                "ipv6": f.network.ipv6,
            },
            "hostname": f.hostname,
        },
        "agent": {
            "namespace": a.namespace,
            "image": a.image,
            "image_pull_policy": a.image_pull_policy,
            "image_pull_secrets": [{"name": n} for n in a.image_pull_secrets],
            "ttl": a.ttl,
            "startup_timeout": a.startup_timeout,
            "communication_timeout": a.communication_timeout,
            "tolerations": [dict(t) for t in a.tolerations]
            if a.tolerations is not None
            else None,
            "resources": dict(a.resources) if a.resources is not None else None,
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "node_selector": dict(a.node_selector),
            "service_account": a.service_account,
            "priority_class": a.priority_class,
            "privileged": a.privileged,
            "disabled_capabilities": list(a.disabled_capabilities),
            "ephemeral": a.ephemeral,
            "log_level": a.log_level,
            "json_log": a.json_log,
        },
        "skip_processes": list(config.skip_processes),
        "skip_build_tools": config.skip_build_tools,
        "skip_extra_build_tools": list(config.skip_extra_build_tools),
        "kubeconfig": config.kubeconfig,
        "kube_context": config.kube_context,
        "accept_invalid_certificates": config.accept_invalid_certificates,
    }
