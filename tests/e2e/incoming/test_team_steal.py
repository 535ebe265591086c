"""A team on one staging: several developers steal from the same target at once, each with
their own filter. Each gets exactly their requests, everyone else gets the target, and
whoever leaves takes only their own redirect with them."""

from __future__ import annotations

import http.client

from incoming_support import PORT, SILLY, TARGET_ANSWER, curl, nft_rules, target_answers_within


def developer(session, target, name):
    return session(target, {"mode": "steal",
                            "http_filter": {"header_filter": f"^x-developer: {name}$"}},
                   argv=["python3", SILLY, str(PORT), f"answered by {name}"])


def ask(target, name=None):
    return curl(target, "/", *(["-H", f"X-Developer: {name}"] if name else []))


def test_each_developer_gets_exactly_their_requests(target, session):
    alice = developer(session, target, "alice")
    bob = developer(session, target, "bob")
    carol = developer(session, target, "carol")
    for _ in range(3):
        assert ask(target, "alice") == "answered by alice\n"
        assert ask(target, "bob") == "answered by bob\n"
        assert ask(target, "carol") == "answered by carol\n"
        assert ask(target) == TARGET_ANSWER
        assert ask(target, "dave") == TARGET_ANSWER
    # One keep-alive connection carrying everyone's requests, in order.
    conn = http.client.HTTPConnection(target.ip, PORT, timeout=5)
    for name in ["bob", None, "alice", "carol", "bob", None]:
        conn.request("GET", "/", headers={"X-Developer": name} if name else {})
        expected = f"answered by {name}\n" if name else TARGET_ANSWER
        assert conn.getresponse().read().decode() == expected
    conn.close()
    assert alice.proc.poll() is None and bob.proc.poll() is None and carol.proc.poll() is None


def test_a_developer_leaving_takes_only_their_own_redirect(target, session):
    alice = developer(session, target, "alice")
    bob = developer(session, target, "bob")
    bob.stop()  # the newer one leaves
    assert ask(target, "alice") == "answered by alice\n"
    assert ask(target, "bob") == TARGET_ANSWER
    bob2 = developer(session, target, "bob")
    alice.stop()  # now the older one leaves
    assert ask(target, "bob") == "answered by bob\n"
    assert ask(target, "alice") == TARGET_ANSWER
    bob2.stop()
    target_answers_within(target, 2)
    assert "tether" not in nft_rules(target)
