"""Two developers steal the same port of one target (`on_concurrent_steal`).

Filtered steals share a port (each developer gets their matches, see test_team_steal).
A steal *without* a filter takes every connection that reaches it, so with one on either
side the sessions conflict, and the newer session's `on_concurrent_steal` decides, as the
incumbent defines it (mirrord's config docs, `feature.network.incoming.on_concurrent_steal`:
`abort` ends the new session when the target's traffic is already being stolen, the
default; `continue` goes on as normal; `override` takes the port and force-closes the
session that held it)."""

from __future__ import annotations

from incoming_support import LOCAL_ANSWER, PORT, SILLY, TARGET_ANSWER, curl, nft_rules

WHOLE = {"mode": "steal"}
FILTERED = {"mode": "steal", "http_filter": {"header_filter": "^x-developer: bob$"}}
BOB = "answered by bob\n"


def bob(session, target, incoming, ready=True):
    return session(target, incoming, argv=["python3", SILLY, str(PORT), BOB.strip()],
                   ready=ready)


def test_by_default_a_second_steal_of_a_stolen_port_aborts_and_names_the_key(target, session):
    alice = session(target, WHOLE)
    second = bob(session, target, WHOLE, ready=False)
    second.wait_for("already stolen by another tether session")
    assert second.proc.wait(10) != 0
    print(second.output)
    assert "on_concurrent_steal" in second.output
    assert "Traceback" not in second.output
    assert curl(target, "/") == LOCAL_ANSWER  # the first session is untouched
    assert nft_rules(target).count("table inet tether_") == 1
    assert alice.proc.poll() is None


def test_a_filtered_steal_also_aborts_on_a_port_stolen_whole(target, session):
    session(target, WHOLE)
    second = bob(session, target, FILTERED, ready=False)
    second.wait_for("already stolen by another tether session")
    assert second.proc.wait(10) != 0


def test_continue_chains_the_new_session_in_front(target, session):
    alice = session(target, WHOLE)
    b = bob(session, target, {**FILTERED, "on_concurrent_steal": "continue"})
    assert curl(target, "/", "-H", "x-developer: bob") == BOB
    assert curl(target, "/") == LOCAL_ANSWER  # what bob's filter passes on, alice takes
    b.stop()
    assert curl(target, "/", "-H", "x-developer: bob") == LOCAL_ANSWER
    assert alice.proc.poll() is None


def test_override_takes_the_port_and_ends_the_session_that_held_it(target, session):
    alice = session(target, WHOLE)
    b = bob(session, target, {**WHOLE, "on_concurrent_steal": "override"})
    assert curl(target, "/") == BOB
    alice.wait_for("taken over by another tether session")
    assert alice.proc.wait(10) != 0
    print(alice.output)
    assert "Traceback" not in alice.output
    b.stop()
    assert curl(target, "/") == TARGET_ANSWER
    assert "tether" not in nft_rules(target)
