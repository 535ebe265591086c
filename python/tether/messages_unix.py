"""Messages of ``feature.network.outgoing.unix_streams``, imported by both sides.

Layer -> orchestrator ``unix_connect`` {path: the socket's name, "@name" for an abstract
one} -> ``unix_connect_reply``: carries the socket connected in the target (SCM_RIGHTS),
or, over links that cannot carry descriptors, ``relay``: the path of a one-shot Unix
listener of the orchestrator that relays the stream.
Orchestrator -> agent ``agent_unix_connect`` {path, relay} -> ``agent_unix_connect_reply``
with the socket, or ``conn`` (the relay stream, see :mod:`tether.relay`).
"""

from __future__ import annotations

from . import protocol

protocol.register("unix_connect", {"id": (int, True), "path": (str, True)})
protocol.register("unix_connect_reply", {"id": (int, True), "relay": (str, False)})
protocol.register("agent_unix_connect", {"id": (int, True), "path": (str, True),
                                         "relay": (bool, False)})
protocol.register("agent_unix_connect_reply", {"id": (int, True), "conn": (int, False)})
