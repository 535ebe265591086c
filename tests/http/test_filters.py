"""Filtered steal: which requests a compiled http_filter selects, mirrord's semantics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from tether.http.filters import HttpFilterSpec, compile_filter
from tether.http.framing import RequestFramer, RequestHead


def request(method: str = "GET", target: str = "/", **headers: str) -> RequestHead:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    (head, *_rest) = RequestFramer().feed(
        f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode()
    )
    assert isinstance(head, RequestHead)
    return head


SEED = {"path_filter": ".+user=vfarcic.*"}

MATCHES: list[tuple[str, dict[str, Any], RequestHead, bool]] = [
    ("seed: only query", SEED, request(target="/?user=vfarcic"), True),
    ("seed: among other params", SEED, request(target="/x?a=1&user=vfarcic"), True),
    ("seed: other user", SEED, request(target="/?user=someone"), False),
    ("seed: no query", SEED, request(target="/"), False),
    ("seed: health check", SEED, request(target="/healthz"), False),
    (
        "seed: absolute-form",
        SEED,
        request(target="http://svc:8080/?user=vfarcic"),
        True,
    ),
    (
        "path is searched, not fullmatched",
        {"path_filter": "video"},
        request(target="/videos"),
        True,
    ),
    ("anchors work", {"path_filter": "^/video$"}, request(target="/videos"), False),
    (
        "path sees the query",
        {"path_filter": r"id=\d+"},
        request("POST", "/video?id=7"),
        True,
    ),
    (
        "path is not percent-decoded",
        {"path_filter": "a b"},
        request(target="/a%20b"),
        False,
    ),
    (
        "header: lower-cased name",
        {"header_filter": "^x-user: vfarcic$"},
        request(X_User="vfarcic"),
        True,
    ),
    (
        "header: sent-case name does not match",
        {"header_filter": "^X-User: "},
        request(X_User="vfarcic"),
        False,
    ),
    (
        "header: value searched",
        {"header_filter": "vfarcic"},
        request(Cookie="u=vfarcic;"),
        True,
    ),
    ("header: absent", {"header_filter": "x-user: .*"}, request(Host="svc"), False),
    (
        "header: value is case-sensitive",
        {"header_filter": "VFARCIC"},
        request(X="vfarcic"),
        False,
    ),
    ("method: case-insensitive", {"method_filter": "get"}, request("GET"), True),
    ("method: other method", {"method_filter": "GET"}, request("POST"), False),
    ("method: exact, not prefix", {"method_filter": "GET"}, request("GETX"), False),
    (
        "all_of: all hold",
        {"all_of": [{"path": "^/video"}, {"method": "post"}, {"header": "^x-user: v"}]},
        request("POST", "/video?id=1", X_User="v"),
        True,
    ),
    (
        "all_of: one fails",
        {"all_of": [{"path": "^/video"}, {"method": "post"}]},
        request("GET", "/video?id=1"),
        False,
    ),
    (
        "any_of: one holds",
        {"any_of": [{"path": "user=vfarcic"}, {"header": "^x-user: vfarcic$"}]},
        request(X_User="vfarcic"),
        True,
    ),
    (
        "any_of: none holds",
        {"any_of": [{"path": "user=vfarcic"}, {"header": "^x-user: vfarcic$"}]},
        request(target="/?user=x"),
        False,
    ),
    (
        "nested groups and *_filter spellings",
        {"any_of": [{"all_of": [{"method_filter": "PUT"}, {"path_filter": "a"}]}]},
        request("PUT", "/a"),
        True,
    ),
]


@pytest.mark.parametrize(
    "spec, head, expected", [c[1:] for c in MATCHES], ids=[c[0] for c in MATCHES]
)
def test_filter_selects_requests(
    spec: dict[str, Any], head: RequestHead, expected: bool
) -> None:
    assert compile_filter(spec).matches(head) is expected


@dataclass
class HttpFilter:
    """Shaped like tether's config dataclass."""

    kind: str
    pattern: str | None = None
    children: list[HttpFilter] = field(default_factory=list)


def test_config_objects_compile_like_mappings() -> None:
    spec = HttpFilter(
        "all_of",
        children=[HttpFilter("path", ".+user=vfarcic.*"), HttpFilter("method", "get")],
    )
    assert isinstance(spec, HttpFilterSpec)
    matcher = compile_filter(spec)
    assert matcher.matches(request("GET", "/?user=vfarcic"))
    assert not matcher.matches(request("POST", "/?user=vfarcic"))
    assert matcher.applies_to_port(1234)


@pytest.mark.parametrize(
    "ports, port, expected",
    [
        (None, 8080, True),
        (None, 3000, True),
        ([80, 8080], 8080, True),
        ([80, 8080], 3000, False),
    ],
)
def test_ports_limit_where_the_filter_decides(
    ports: list[int] | None, port: int, expected: bool
) -> None:
    spec: dict[str, Any] = dict(SEED) if ports is None else {**SEED, "ports": ports}
    assert compile_filter(spec).applies_to_port(port) is expected


ERRORS: list[tuple[str, Any, str]] = [
    ("invalid path regex", {"path_filter": "user=(vfarcic"}, "user=(vfarcic"),
    ("invalid header regex", {"header_filter": "[x-"}, "[x-"),
    ("invalid regex inside all_of", {"all_of": [{"path": "*a"}]}, "*a"),
    ("no filter", {}, "exactly one of"),
    ("only ports", {"ports": [80]}, "exactly one of"),
    ("two filters", {"path_filter": "a", "header_filter": "b"}, "exactly one of"),
    ("unknown key", {"body_filter": "a"}, "body_filter"),
    ("unknown key inside all_of", {"all_of": [{"query": "a"}]}, "query"),
    ("two keys inside any_of", {"any_of": [{"path": "a", "method": "GET"}]}, "one key"),
    ("empty all_of", {"all_of": []}, "all_of needs at least one"),
    ("all_of not a list", {"all_of": "a"}, "list"),
    ("empty regex", {"path_filter": ""}, "non-empty"),
    ("regex not a string", {"path_filter": 5}, "5"),
    ("method not a token", {"method_filter": "GET /"}, "GET /"),
    ("port out of range", {**SEED, "ports": [70000]}, "70000"),
    ("port not a number", {**SEED, "ports": ["80"]}, "'80'"),
    ("ports empty", {**SEED, "ports": []}, "empty"),
    ("unknown object kind", HttpFilter("query", "a"), "query"),
]


@pytest.mark.parametrize(
    "spec, named", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_bad_filters_are_rejected_naming_the_input(spec: Any, named: str) -> None:
    with pytest.raises(ValueError) as exc:
        compile_filter(spec)
    assert named in str(exc.value)


def test_matcher_repr_names_the_filter() -> None:
    assert repr(compile_filter({**SEED, "ports": [8080]})) == (
        "RequestMatcher(path~'.+user=vfarcic.*', ports=[8080])"
    )
