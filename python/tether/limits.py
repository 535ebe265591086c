"""Process limits tether sets for itself (never for the developer's program).

A stolen port costs the agent one descriptor per client connection (two with a filter:
client and application), and the orchestrator one or two per connection it relays. The
usual soft limit of 1,024 is a few hundred idle keep-alive clients, which a load
balancer or a connection pool reaches easily; the hard limit is usually far higher.
Both the agent and the orchestrator raise their own soft limit to the hard limit at
start. The program is exec'd by ``tether exec``, which never calls this: its limits stay
the ones the developer set.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("tether")

#: Enough for tens of thousands of connections; more only wastes kernel memory in tables.
CEILING = 1 << 20


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; return the new soft
    limit. Never fails: a refusal leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, want, exc)
    return soft
