"""Compile a filtered-steal ``http_filter`` into a predicate over request heads.

Owns the meaning of a filter (mirrord's, so its config files work unchanged): regexes
*search* (``.+user=vfarcic.*`` matches ``/?user=vfarcic``), a path filter sees the
target's path and query as sent, a header filter sees each ``name: value`` line with the
name lower-cased, a method filter compares case-insensitively. Pure: no I/O.

Accepted shapes (``compile_filter``):

- a mapping in mirrord's JSON shape: exactly one of ``path_filter``, ``header_filter``,
  ``method_filter``, ``all_of``, ``any_of``, plus optional ``ports``. Inside ``all_of`` /
  ``any_of`` each element has one key: ``path``, ``header``, ``method`` (the
  ``*_filter`` spellings and nested ``all_of`` / ``any_of`` are accepted too).
- an object shaped like ``HttpFilterSpec`` (``kind``, ``pattern``, ``children``,
  optionally ``ports``), e.g. tether's config dataclass.

``ports`` absent means the filter applies on every stolen port. (mirrord defaults to
[80, 8080] and steals *everything* on other ports; a config loader that wants that
default passes it explicitly.)

Regexes run on RE2 (``google-re2``): matching is linear in the length of the path or
header line, so no request can stall the router with a pattern like ``.+user=x.*``
against a 30 KB path (Python's backtracking ``re`` takes seconds there). RE2's syntax is
the Rust-regex family mirrord documents; look-around and back-references are not
available and are refused when the filter is compiled (``compile_regex``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import re2

__all__ = ["HttpFilterSpec", "RequestMatcher", "compile_filter", "compile_regex"]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are ours to report, not glog lines on stderr
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked: the fastest engine
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")


class Regex:
    """An RE2 regex searched in UTF-8 bytes (path and header lines as sent)."""

    __slots__ = ("_match", "_none", "_public", "pattern")

    def __init__(self, pattern: str) -> None:
        compiled = re2.compile(pattern.encode("utf-8"), _RE2_OPTIONS)
        self.pattern = pattern
        self._public = compiled
        # The binding's low-level call skips the wrapper's match object (a third of the
        # cost of a search); the public one stays the fallback should that change.
        low = getattr(compiled, "_regexp", None)
        anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
        none = getattr(re2, "_NULL_SPAN", None)
        self._match = None
        self._none = none
        if low is not None and anchor is not None and none is not None:
            match = low.Match
            self._match = lambda text: match(anchor, text, 0, len(text))[0]

    def search(self, text: bytes) -> bool:
        if self._match is not None:
            return bool(self._match(text) != self._none)
        return self._public.search(text) is not None


def compile_regex(pattern: str) -> Regex:
    """``pattern`` compiled by RE2; ``ValueError`` (saying why) if RE2 cannot run it."""
    try:
        return Regex(pattern)
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        if "perl operator" in why or "escape sequence" in why:
            why += " (filters use RE2 syntax: no look-around or back-references)"
        raise ValueError(why) from None

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LEAF_KEYS = {
    "path_filter": "path",
    "path": "path",
    "header_filter": "header",
    "header": "header",
    "method_filter": "method",
    "method": "method",
}
_GROUP_KEYS = ("all_of", "any_of")
_TOP_KEYS = ("path_filter", "header_filter", "method_filter", *_GROUP_KEYS)


@runtime_checkable
class HttpFilterSpec(Protocol):
    """What ``compile_filter`` reads from a filter object (``ports`` is optional)."""

    kind: str  # 'path' | 'header' | 'method' | 'all_of' | 'any_of'
    pattern: str | None
    children: Sequence[Any]


class _Head(Protocol):
    """What a filter reads of a request (``framing.RequestHead``, ``wire.RequestInfo``):
    the target as sent, and ``(lower-cased name, value)`` header fields."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...


class _Predicate(Protocol):
    def matches(self, head: _Head) -> bool: ...


def _path(target: bytes) -> bytes:
    """Path and query as sent; an absolute-form target loses scheme and host."""
    if target[:1] == b"/":
        return target
    m = _ABSOLUTE_FORM.match(target)
    if m is None:
        return target
    rest = target[m.end() :]
    return rest if rest[:1] == b"/" else b"/" + rest


@dataclass(frozen=True)
class _Path:
    regex: Regex

    def matches(self, head: _Head) -> bool:
        return self.regex.search(_path(head.target))

    def __str__(self) -> str:
        return f"path~{self.regex.pattern!r}"


@dataclass(frozen=True)
class _Header:
    regex: Regex

    def matches(self, head: _Head) -> bool:
        search = self.regex.search
        return any(search(b"%s: %s" % (n, v)) for n, v in head.headers)

    def __str__(self) -> str:
        return f"header~{self.regex.pattern!r}"


@dataclass(frozen=True)
class _Method:
    method: bytes

    def matches(self, head: _Head) -> bool:
        return head.method.upper() == self.method

    def __str__(self) -> str:
        return f"method={self.method.decode()}"


@dataclass(frozen=True)
class _AllOf:
    children: tuple[_Predicate, ...]

    def matches(self, head: _Head) -> bool:
        return all(child.matches(head) for child in self.children)

    def __str__(self) -> str:
        return "all_of(" + ", ".join(map(str, self.children)) + ")"


@dataclass(frozen=True)
class _AnyOf:
    children: tuple[_Predicate, ...]

    def matches(self, head: _Head) -> bool:
        return any(child.matches(head) for child in self.children)

    def __str__(self) -> str:
        return "any_of(" + ", ".join(map(str, self.children)) + ")"


class RequestMatcher:
    """A compiled filter: which requests to steal, and on which ports it decides."""

    def __init__(self, predicate: _Predicate, ports: frozenset[int] | None) -> None:
        self._predicate = predicate
        self.ports = ports  # None: every port

    def matches(self, head: _Head) -> bool:
        return self._predicate.matches(head)

    def applies_to_port(self, port: int) -> bool:
        """False: on this port the filter is not consulted (the driver steals all)."""
        return self.ports is None or port in self.ports

    def __repr__(self) -> str:
        ports = "all" if self.ports is None else sorted(self.ports)
        return f"RequestMatcher({self._predicate}, ports={ports})"


def compile_filter(spec: Mapping[str, Any] | HttpFilterSpec) -> RequestMatcher:
    """Compile ``spec`` (see the module docstring). Raises ``ValueError`` naming the
    offending key, regex or port."""
    if isinstance(spec, Mapping):
        ports = spec.get("ports")
        keys = [k for k in spec if k != "ports"]
        unknown = [k for k in keys if k not in _TOP_KEYS]
        if unknown or len(keys) != 1:
            raise ValueError(
                f"http_filter needs exactly one of {', '.join(_TOP_KEYS)} "
                f"(and optionally ports); got {', '.join(map(str, keys)) or 'none'}"
            )
        predicate = _from_mapping_entry(keys[0], spec[keys[0]])
    else:
        ports = getattr(spec, "ports", None)
        predicate = _from_object(spec)
    return RequestMatcher(predicate, _ports(ports))


def _from_mapping(spec: Any) -> _Predicate:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(
            f"each filter inside all_of/any_of must be an object with one key "
            f"(path, header, method, all_of or any_of); got {spec!r}"
        )
    ((key, value),) = spec.items()
    if key not in _LEAF_KEYS and key not in _GROUP_KEYS:
        raise ValueError(
            f"unknown filter {key!r}: use path, header, method, all_of or any_of"
        )
    return _from_mapping_entry(key, value)


def _from_mapping_entry(key: str, value: Any) -> _Predicate:
    if key in _GROUP_KEYS:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"{key} must be a list of filters, got {value!r}")
        return _group(key, [_from_mapping(child) for child in value])
    return _leaf(_LEAF_KEYS[key], value, key)


def _from_object(spec: Any) -> _Predicate:
    kind = getattr(spec, "kind", None)
    if kind in _GROUP_KEYS:
        return _group(kind, [_from_object(child) for child in spec.children])
    if kind in ("path", "header", "method"):
        return _leaf(kind, spec.pattern, f"{kind} filter")
    raise ValueError(
        f"unknown filter kind {kind!r}: use path, header, method, all_of or any_of"
    )


def _group(kind: str, children: list[_Predicate]) -> _Predicate:
    if not children:
        raise ValueError(f"{kind} needs at least one filter")
    return _AllOf(tuple(children)) if kind == "all_of" else _AnyOf(tuple(children))


def _leaf(kind: str, pattern: Any, where: str) -> _Predicate:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where} needs a non-empty string, got {pattern!r}")
    if kind == "method":
        if not _TOKEN.fullmatch(pattern):
            raise ValueError(f"{where}: {pattern!r} is not an HTTP method name")
        return _Method(pattern.upper().encode("ascii"))
    try:
        regex = compile_regex(pattern)
    except ValueError as exc:
        raise ValueError(f"{where}: invalid regex {pattern!r}: {exc}") from None
    return _Path(regex) if kind == "path" else _Header(regex)


def _ports(ports: Any) -> frozenset[int] | None:
    if ports is None:
        return None
    if isinstance(ports, (str, bytes)) or not isinstance(ports, Iterable):
        # ValueError for every config mistake, so callers catch one exception type.
        msg = f"http_filter ports must be a list of port numbers, got {ports!r}"
        raise ValueError(msg)  # noqa: TRY004
    out = set()
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(
                f"http_filter ports: {port!r} is not a port number (1-65535)"
            )
        out.add(port)
    if not out:
        raise ValueError(
            "http_filter ports is empty: list the filtered ports or omit it"
        )
    return frozenset(out)
