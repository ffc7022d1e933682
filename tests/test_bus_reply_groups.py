"""Replies held while a backlog drains: per peer, in order, in groups of half its requests."""

from __future__ import annotations

from aether_box.bus.reply_groups import GROUP_MAX, ReplyGroups


def reply(peer: bytes, n: int) -> list[bytes]:
    return [peer, str(n).encode()]


def drain(groups: ReplyGroups, requests: dict[bytes, int]) -> None:
    """One drain of the socket that found `requests` messages from each peer."""
    for peer, count in requests.items():
        for _ in range(count):
            groups.request_from(peer)
    groups.drained()


def test_a_peer_not_yet_seen_gets_each_reply_at_once():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    groups.add(reply(b"a", 1))
    assert sent == [reply(b"a", 1)]
    assert groups.flush() is False  # nothing held


def test_a_peer_with_many_in_flight_gets_groups_of_half_of_them():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    drain(groups, {b"a": 8})  # groups of 4
    for n in range(6):
        groups.add(reply(b"a", n))
    assert sent == [reply(b"a", n) for n in range(4)]
    assert groups.flush() is True  # the socket is drained: the rest goes
    assert sent == [reply(b"a", n) for n in range(6)]
    assert groups.snapshot() == {"groups": 2, "replies": 6}


def test_a_peer_with_one_request_at_a_time_never_waits_on_another():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    drain(groups, {b"busy": 32, b"lockstep": 1})
    groups.add(reply(b"busy", 1))
    groups.add(reply(b"lockstep", 1))
    assert sent == [reply(b"lockstep", 1)]
    groups.flush()
    assert sent == [reply(b"lockstep", 1), reply(b"busy", 1)]


def test_group_sizes_follow_each_drain_within_bounds():
    sent: list[list[bytes]] = []
    groups = ReplyGroups(sent.append)
    drain(groups, {b"a": 10_000})
    for n in range(GROUP_MAX - 1):
        groups.add(reply(b"a", n))
    assert sent == []  # capped at GROUP_MAX, not half of 10,000
    groups.add(reply(b"a", GROUP_MAX))
    assert len(sent) == GROUP_MAX
    groups.drained()  # a wake-up that found nothing keeps the sizes
    groups.add(reply(b"a", 0))
    assert len(sent) == GROUP_MAX
    groups.flush()
    drain(groups, {b"a": 3})  # few in flight now: replies go at once again
    groups.add(reply(b"a", 1))
    assert sent[-1] == reply(b"a", 1)
