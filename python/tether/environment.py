"""The child's environment: the local one, with the target's variables merged in.

A pure function of its inputs (plus reading `feature.env.env_file`), so every
rule below is covered by table-driven tests. The environment has to be built
before spawn: sh, Python, Node and Go read `environ` directly, never `getenv`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from tether.config import EnvConfig, compile_pattern

# Names that describe the developer's machine rather than the app: taking the
# pod's value would break the local program or its toolchain (the pod's PATH,
# HOME or GOPATH do not exist here, its LD_PRELOAD would drop tether's layer).
# They stay local unless an include pattern names them (see `compute_env`).
DEFAULT_LOCAL_ONLY: tuple[str, ...] = (
    "PATH",
    "HOME",
    "SHELL",
    "USER",
    "LOGNAME",
    "PWD",
    "OLDPWD",
    "TERM",
    "COLORTERM",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TMPDIR",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "XDG_*",
    "DBUS_SESSION_BUS_ADDRESS",
    "SSH_AUTH_SOCK",
    "HOSTNAME",
    "SHLVL",
    "_",
    "LD_*",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "GOROOT",
    "GOPATH",
    "GOCACHE",
    "GOMODCACHE",
    "JAVA_HOME",
    "CLASSPATH",
    "TETHER_*",
)


class EnvFileError(ValueError):
    """`feature.env.env_file` is missing or malformed; the message names file and line."""


def _glob(pattern: str) -> re.Pattern[str]:
    """mirrord's env globs: `*` any run of characters, `?` exactly one."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(_glob(p).fullmatch(name) for p in patterns)


def _names_explicitly(name: str, patterns: Iterable[str]) -> bool:
    """An include pattern names a variable when it matches it and is not only
    wildcards: `PATH` and `LC_*` do, `*` does not."""
    return any(p.strip("*?") and _glob(p).fullmatch(name) for p in patterns)


def parse_environ(raw: bytes) -> dict[str, str]:
    """A process's environment as /proc/<pid>/environ holds it (NUL-separated NAME=value;
    entries without '=' are skipped, bytes that are not UTF-8 kept as surrogates)."""
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if not item or b"=" not in item:
            continue
        key, _, value = item.partition(b"=")
        env[key.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return env


def is_local_only(name: str) -> bool:
    return _matches(name, DEFAULT_LOCAL_ONLY)


# --------------------------------------------------------------------------
# dotenv files

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_EXPAND = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "\\$"}


def _expand(value: str, known: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        return known.get(m.group(1) or m.group(2), "")

    # `\$` (kept as a marker by the unescaping) is a literal dollar sign.
    parts = value.split("\\$")
    return "$".join(_EXPAND.sub(sub, part) for part in parts)


def parse_dotenv(
    text: str, *, name: str = ".env", known: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Parse dotenv text: `KEY=VALUE` lines, `export ` prefixes, `#` comments,
    single quotes (literal), double quotes (escapes, may span lines) and
    `$VAR` / `${VAR}` expansion from earlier lines or `known`."""
    out: dict[str, str] = {}
    scope = dict(known or {})
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith(("export ", "export\t")):
            line = line[len("export") :].lstrip()
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            raise EnvFileError(
                f"{name}:{lineno}: expected KEY=VALUE, got {lines[lineno - 1]!r}"
            )
        rest = rest.strip()
        if rest.startswith("'"):
            end = rest.find("'", 1)
            if end < 0:
                raise EnvFileError(f"{name}:{lineno}: unterminated single quote")
            value = rest[1:end]
        elif rest.startswith('"'):
            buf, pos, done = [], 1, False
            while not done:
                while pos < len(rest):
                    c = rest[pos]
                    if c == "\\" and pos + 1 < len(rest):
                        nxt = rest[pos + 1]
                        buf.append(_ESCAPES.get(nxt, "\\" + nxt))
                        pos += 2
                    elif c == '"':
                        done = True
                        break
                    else:
                        buf.append(c)
                        pos += 1
                if not done:
                    if i >= len(lines):
                        raise EnvFileError(
                            f"{name}:{lineno}: unterminated double quote"
                        )
                    buf.append("\n")
                    rest, pos = lines[i], 0
                    i += 1
            value = _expand("".join(buf), scope)
        else:
            comment = re.search(r"\s#", rest)
            value = _expand(rest[: comment.start()] if comment else rest, scope).strip()
        out[key] = value
        scope[key] = value
    return out


def _read_env_file(path: str, cwd: str, known: Mapping[str, str]) -> dict[str, str]:
    full = os.path.join(cwd, os.path.expanduser(path))
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise EnvFileError(
            f"{path}: cannot read the env file: {exc.strerror}"
        ) from None
    return parse_dotenv(text, name=path, known=known)


# --------------------------------------------------------------------------


def select_remote(remote: Mapping[str, str], cfg: EnvConfig) -> dict[str, str]:
    """The target's variables that `cfg` lets through, before env_file,
    mapping and override."""
    selected = {}
    for name, value in remote.items():
        if name.startswith("TETHER_"):
            continue  # tether's own control variables never come from the target
        if cfg.include and not _matches(name, cfg.include):
            continue
        if _matches(name, cfg.exclude):
            continue
        if is_local_only(name) and not _names_explicitly(name, cfg.include):
            continue
        selected[name] = value
    return selected


def compute_env(
    local: Mapping[str, str],
    remote: Mapping[str, str],
    cfg: EnvConfig,
    *,
    cwd: str,
) -> dict[str, str]:
    """The environment to spawn the local process with.

    In order, each step overriding the previous one:

    1. the local environment;
    2. the target's variables: those matching `include` if it is set (else
       all), minus those matching `exclude`, minus `DEFAULT_LOCAL_ONLY` names
       unless an include pattern names them explicitly (`PATH`, `LC_*`; a bare
       `*` does not); `TETHER_*` never comes from the target;
    3. `mapping` (`name regex -> value`, searched like mirrord's) replaces the
       values of the target's variables whose names match;
    4. `env_file` (dotenv, relative to `cwd`);
    5. `override`;
    6. `unset` removes names, case-insensitively (as mirrord does).

    With `cfg.enabled == False` (`"env": false`) steps 2-3 are skipped: no
    variable comes from the target, but what the user wrote explicitly
    (env_file, override, unset) still applies. mirrord's `env: false` cannot
    carry those keys, so this only matters for configs built in code.

    Raises EnvFileError when the env file is missing or malformed.
    """
    env = dict(local)
    if cfg.enabled:
        selected = select_remote(remote, cfg)
        for pattern, value in cfg.mapping.items():
            regex = compile_pattern(pattern)
            for name in selected:
                if regex.search(name):
                    selected[name] = value
        env.update(selected)
    if cfg.env_file:
        env.update(_read_env_file(cfg.env_file, cwd, env))
    env.update(cfg.override)
    if cfg.unset:
        drop = {name.upper() for name in cfg.unset}
        env = {k: v for k, v in env.items() if k.upper() not in drop}
    return env


# --------------------------------------------------------------------------
# what exec accepts

# Linux refuses one "NAME=value" string longer than MAX_ARG_STRLEN (32 pages, NUL
# included) and argument + environment strings (with their pointers) beyond ARG_MAX
# (a quarter of the stack limit): execve fails with E2BIG.
MAX_ARG_STRLEN = 32 * 4096


def _arg_max() -> int:
    try:
        return max(int(os.sysconf("SC_ARG_MAX")), MAX_ARG_STRLEN)
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def exec_size_problems(env: Mapping[str, str], argv: Iterable[str] = (),
                       where: Mapping[str, str] | None = None) -> list[str]:
    """Why exec would fail with E2BIG for this environment and argv ([] when it fits).
    ``where`` names the origin of a variable (e.g. its config key) in the message."""
    problems = []
    total = 0
    count = 0
    for name, value in env.items():
        size = len(name.encode(errors="surrogateescape")) + 1 + len(
            value.encode(errors="surrogateescape")) + 1
        total += size
        count += 1
        if size > MAX_ARG_STRLEN:
            origin = (where or {}).get(name, f"variable {name}")
            problems.append(f"{origin}: {size} bytes; exec accepts at most {MAX_ARG_STRLEN} "
                            "bytes per variable (E2BIG)")
    for arg in argv:
        total += len(arg.encode(errors="surrogateescape")) + 1
        count += 1
    total += 8 * (count + 2)
    limit = _arg_max()
    if total > limit:
        problems.append(f"{total} bytes of environment and arguments; exec accepts at most "
                        f"{limit} (E2BIG)")
    return problems


def exec_limit_problems(local: Mapping[str, str], cfg: EnvConfig, cwd: str) -> list[str]:
    """What of the config's own environment (override, env_file) cannot fit exec, with the
    current local environment; named by JSON path.  The target's variables are only known
    once the session starts (then ``exec_size_problems`` is what tether exec reports)."""
    env = dict(local)
    where: dict[str, str] = {}
    if cfg.env_file:
        try:
            from_file = _read_env_file(cfg.env_file, cwd, env)
        except EnvFileError:
            from_file = {}  # reported when the session starts, with its line number
        env.update(from_file)
        where.update((name, f"feature.env.env_file ({cfg.env_file}): {name}")
                     for name in from_file)
    env.update(cfg.override)
    where.update((name, f"feature.env.override.{name}") for name in cfg.override)
    if not where:
        return []  # nothing of the config's: the local environment fits, it runs here
    return [p if p.startswith("feature.env") else
            f"feature.env (override/env_file with this shell's environment): {p}"
            for p in exec_size_problems(env, (), where)]
