"""Keep a resumable agent link connected when the connection under it drops.

A Kubernetes agent is reached through the API server's port-forward, which the API server
may cut at any time (a restart, an idle timeout, a load balancer in front of it).  The
link to the agent is then *interrupted* (``tether.link``): calls in flight fail, relayed
connections are reset, the program keeps running.  This task opens a new connection
(the target's ``reconnect``, with backoff), re-authenticates with the session secret and
resumes the same link, so the agent's side of the session (subscriptions, redirects)
carries on where it was; the agent waits ``RESUME_GRACE`` seconds for that
(``tether.agent.server.AgentServer``).  tether says once what happened.  If the target says
the agent is gone (TargetError), or the connection cannot be re-established within
RECONNECT_WINDOW, the link is closed and the session ends as before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from . import protocol
from .link import Link

log = logging.getLogger("tether")

# Shorter than the agent's grace period (agent.__main__.RESUME_GRACE = 30 s), so the agent
# still holds the session when the last attempt arrives.
RECONNECT_WINDOW = 25.0
AUTH_TIMEOUT = 5.0

Reconnect = Callable[[], Awaitable[socket.socket]]


async def keep_connected(link: Link, reconnect: Reconnect, secret: str, what: str,
                         window: float = RECONNECT_WINDOW) -> None:
    """Run for the life of ``link``: resume it each time its connection drops."""
    from .targets import TargetError

    while not link.closed.is_set():
        interrupted = asyncio.ensure_future(link.interrupted.wait())
        closed = asyncio.ensure_future(link.closed.wait())
        await asyncio.wait([interrupted, closed], return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        closed.cancel()
        if link.closed.is_set():
            return
        reason = link.interrupt_reason
        started = time.monotonic()
        delay = 0.1
        last = ""
        while not link.closed.is_set():
            try:
                sock = await reconnect()
                link.resume(sock)
                # The auth frame is the first on the new connection: nothing else is sent
                # between resume() and this call's send.
                await link.call({"t": "auth", "v": protocol.VERSION, "secret": secret},
                                AUTH_TIMEOUT)
            except TargetError as exc:
                link.close(f"lost the connection to the agent in {what} ({reason}) and "
                           f"cannot get it back: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - retried until the window closes
                last = str(exc) or type(exc).__name__
                log.debug("reconnecting to the agent in %s: %s", what, last)
                if time.monotonic() - started + delay > window:
                    link.close(f"lost the connection to the agent in {what} ({reason}) and "
                               f"could not re-establish it within {window:.0f} s ({last}); "
                               "run the command again to start a new session")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            log.warning("the connection to the agent in %s dropped (%s); reconnected after "
                        "%.1f s (connections that were open through it were reset)",
                        what, reason, time.monotonic() - started)
            break
