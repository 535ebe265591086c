"""Messages of the incoming feature (mirror / steal), imported by every side.

layer -> orchestrator
  in_listen {port, local_port, addr, family,  the program listens: subscribe target `port`,
             adopt?}                          served locally at addr:local_port; adopt: a
                                              listener the process did not bind (port is
                                              the layer's guess, 0 for none); the reply
                                              says {ok, port?, want?}: the target port and
                                              the port getsockname reports
  in_bind {port, want, local_port}            a socket bound at local_port serves target
                                              `port` (the program asked for `want`); the
                                              binding process holds the subscription
  in_peer {port, listen_port}                 who is the relay connection from local `port`?
orchestrator -> agent
  in_subscribe {port, mode, filter?, relay?,  mirror or steal `port` (filter: mirrord's
                shadow?, on_concurrent_steal?} http_filter mapping, with optional ports;
                                              relay: hand streams over as relay streams,
                                              not descriptors; shadow: mirror also
                                              summarises the target's answers, in_shadow;
                                              on_concurrent_steal: abort, continue or
                                              override when another session steals it)
  in_unsubscribe {port}
agent -> orchestrator
  in_conn {conn, port, peer_addr, peer_port, mode} + one descriptor: a stream to deliver to
                                              the program's listener (the client socket
                                              itself, or one end of a socketpair the agent
                                              feeds); reply ok=False when nobody listens
                                              any more (the agent then serves it from the
                                              target, and the orchestrator unsubscribes).
                                              relay=True: no descriptor; ``conn`` numbers a
                                              relay stream (tether.relay). On ok=True the
                                              agent registers its end and sends
                                              relay_ack n=0, which starts the
                                              orchestrator's end.
  in_lost {port, reason}                      a subscription broke inside the agent
  in_shadow {port, peer_addr, peer_port,      mirror with shadow: the target's answers on
             answers, end?}                   that connection, summarised in order
                                              (tether.http.shadow); end: the flow is over
"""

from __future__ import annotations

from . import protocol

_I, _S, _B, _M = int, str, bool, dict


def _register() -> None:
    if "in_listen" in protocol.SCHEMAS:
        return
    reg = protocol.register
    reg("in_listen", {"id": (_I, True), "port": (_I, True), "local_port": (_I, True),
                      "addr": (_S, True), "family": (_I, True), "adopt": (_B, False)})
    reg("in_listen_reply", {"id": (_I, True), "ok": (_B, True), "port": (_I, False),
                            "want": (_I, False)})
    reg("in_bind", {"id": (_I, True), "port": (_I, True), "want": (_I, True),
                    "local_port": (_I, True)})
    reg("in_bind_reply", {"id": (_I, True)})
    reg("in_peer", {"id": (_I, True), "port": (_I, True), "listen_port": (_I, False)})
    reg("in_peer_reply", {"id": (_I, True), "addr": (object, True), "port": (_I, True)})
    reg("in_subscribe", {"id": (_I, True), "port": (_I, True), "mode": (_S, True),
                         "filter": (object, False), "relay": (_B, False),
                         "shadow": (_B, False), "on_concurrent_steal": (_S, False)})
    reg("in_subscribe_reply", {"id": (_I, True), "port": (_I, True)})
    reg("in_unsubscribe", {"id": (_I, True), "port": (_I, True)})
    reg("in_unsubscribe_reply", {"id": (_I, True)})
    reg("in_conn", {"id": (_I, True), "conn": (_I, True), "port": (_I, True),
                    "peer_addr": (_S, True), "peer_port": (_I, True), "mode": (_S, True),
                    "relay": (_B, False)})
    reg("in_conn_reply", {"id": (_I, True), "ok": (_B, True)})
    reg("in_lost", {"port": (_I, True), "reason": (_S, True)})
    reg("in_shadow", {"port": (_I, True), "peer_addr": (_S, True), "peer_port": (_I, True),
                      "answers": (list, True), "end": (_B, False)})


_register()
