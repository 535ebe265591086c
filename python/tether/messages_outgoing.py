"""Messages of the outgoing-traffic and DNS feature.

Layer -> orchestrator:
  ``dns_lookup``   {name, family (0/2/10), addrconfig}        -> ``dns_lookup_reply``
                   {canon, addrs: [[family, packed-address-bytes], ...]} or an error whose
                   ``code`` is ``"eai"`` and ``errno`` the negated EAI_* value.
  ``out_connect``  {proto "tcp"|"udp", family, addr (packed bytes), port, connect (bool)}
                   -> ``out_connect_reply`` {mode "fd"|"relay", result (0 or errno),
                   local [addr, port], relay [addr, port] (relay mode)}; in fd mode the reply
                   carries the socket made inside the target (SCM_RIGHTS).
Orchestrator -> agent: ``agent_dns`` / ``agent_connect`` with the same fields, plus
  ``relay`` (bool) on agent_connect: the agent keeps the socket and streams its bytes.
Relay stream (both directions, no reply): ``relay_data`` / ``relay_ack`` / ``relay_close``
  keyed by the ``conn`` of agent_connect_reply, see :mod:`tether.relay`.
  UDP (proto "udp", relay): one ``relay_data`` per datagram, the agent's socket connected to
  the destination, the layer's to the orchestrator's loopback UDP port (``relay``).
"""

from __future__ import annotations

import logging

from . import protocol

log = logging.getLogger("tether.outgoing")

_I, _S, _B, _L, _BOOL = int, str, bytes, list, bool

protocol.register("dns_lookup", {"id": (_I, True), "name": (_S, True), "family": (_I, True),
                                 "addrconfig": (_BOOL, False)})
protocol.register("dns_lookup_reply", {"id": (_I, True), "canon": (_S, True),
                                       "addrs": (_L, True)})
protocol.register("agent_dns", {"id": (_I, True), "name": (_S, True), "family": (_I, True),
                                "addrconfig": (_BOOL, False)})
protocol.register("agent_dns_reply", {"id": (_I, True), "canon": (_S, True),
                                      "addrs": (_L, True)})
_CONNECT = {"id": (_I, True), "proto": (_S, True), "family": (_I, True), "addr": (_B, True),
            "port": (_I, True), "connect": (_BOOL, False)}
protocol.register("out_connect", _CONNECT)
protocol.register("out_connect_reply", {"id": (_I, True), "mode": (_S, True),
                                        "result": (_I, True), "local": (_L, False),
                                        "relay": (_L, False)})
protocol.register("agent_connect", {**_CONNECT, "relay": (_BOOL, False)})
protocol.register("agent_connect_reply", {"id": (_I, True), "result": (_I, True),
                                          "local": (_L, False), "conn": (_I, False)})
# The relay stream (links that cannot carry descriptors) is shared with the incoming
# feature: see relay.py (``relay_data`` / ``relay_ack`` / ``relay_close``).
from .relay import CHUNK, WINDOW, RelayStream, RelayTable  # noqa: E402,F401
