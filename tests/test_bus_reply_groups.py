"""Replies held while a backlog drains go out per peer, in order, in groups of the set size."""

from __future__ import annotations

from aether_box.bus.reply_groups import GROUP_MAX, ReplyGroups


def reply(peer: bytes, n: int) -> list[bytes]:
    return [peer, str(n).encode()]


def test_a_group_of_one_sends_each_reply_at_once():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    groups.add(reply(b"a", 1))
    assert sent == [reply(b"a", 1)]
    assert groups.flush() is False  # nothing left held


def test_replies_to_one_peer_wait_for_a_full_group_or_a_flush():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    groups.drained(8)  # half the backlog: groups of 4
    for n in range(6):
        groups.add(reply(b"a", n))
    assert sent == [reply(b"a", n) for n in range(4)]
    assert groups.flush() is True
    assert sent == [reply(b"a", n) for n in range(6)]


def test_another_peer_never_waits_on_a_group_it_is_not_in():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    groups.drained(8)
    groups.add(reply(b"a", 1))
    groups.next_from(b"a")  # the same peer's next request: keep holding
    assert sent == []
    groups.next_from(b"b")  # another peer's request is next: a's reply goes first
    assert sent == [reply(b"a", 1)]
    groups.add(reply(b"a", 2))
    groups.add(reply(b"b", 1))  # a reply to b sends a's group before it is held
    assert sent == [reply(b"a", 1), reply(b"a", 2)]
    groups.flush()
    assert sent[-1] == reply(b"b", 1)


def test_group_size_is_half_the_backlog_within_bounds():
    groups = ReplyGroups(lambda frames: None)
    for backlog, size in [(0, 1), (1, 1), (3, 1), (10, 5), (10_000, GROUP_MAX)]:
        groups.drained(backlog)
        assert groups.size == size
