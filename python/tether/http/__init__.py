"""Pure HTTP/1.x pieces: the agent's request router (``router``: one connection, events
in, commands out; ``wire``: its strict framing), the filters (which requests are stolen,
on RE2) and ``framing`` (event-style framers for observers such as shadow testing).
Sans-I/O: no sockets, threads or asyncio here; the agent drives them."""

from tether.http.filters import RequestMatcher, compile_filter
from tether.http.framing import (
    Body,
    Event,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    ResponseEnd,
    ResponseFramer,
    ResponseHead,
    Tunnel,
    Upgraded,
    header_lines,
    request_path,
    wants_upgrade,
)

__all__ = [
    "Body",
    "Event",
    "H2Preface",
    "Invalid",
    "RequestEnd",
    "RequestFramer",
    "RequestHead",
    "RequestMatcher",
    "ResponseEnd",
    "ResponseFramer",
    "ResponseHead",
    "Tunnel",
    "Upgraded",
    "compile_filter",
    "header_lines",
    "request_path",
    "wants_upgrade",
]
