"""The grid's parts that need no running box: placement arithmetic and the CURVE allow list."""

from __future__ import annotations

import asyncio
import shutil

import zmq.auth

from aether_box.bus.security import AllowList, init_keys, keys_dir
from aether_box.grid.placement import Candidate, expected_wait_s, rank, reason


def test_expected_wait_is_the_work_ahead_shared_over_the_slots():
    assert expected_wait_s(None) == 0.0  # not loaded there: idle
    assert expected_wait_s({"slots": 4, "busy": 2, "queue": 2, "request_s": 2.0}) == 2.0
    # What this box placed there and has not seen finish counts, if the report lags.
    assert expected_wait_s({"slots": 2, "busy": 0, "queue": 0, "request_s": 1.0}, 4) == 2.0
    assert expected_wait_s(None, 1) == 1.0


def test_the_shortest_wait_wins_and_here_wins_a_tie():
    remote = object()
    here = Candidate("a", 0.5)
    ranked = rank([Candidate("b", 0.5, remote), here, Candidate("c", 0.1, remote)])
    assert [c.box for c in ranked] == ["c", "a", "b"]
    assert reason(ranked)[0] == "shortest_wait"
    tie = rank([Candidate("b", 0.5, remote), here])
    assert tie[0] is here and reason(tie)[0] == "tie_local"
    assert reason(rank([Candidate("c", 0, remote), Candidate("b", 0, remote)]))[0] == "tie"
    assert reason([here])[0] == "only_box"


def test_the_allow_list_admits_revokes_and_rereads_its_directory(tmp_path):
    box, guest, other = (tmp_path / n for n in ("box", "guest", "other"))
    for d in (box, guest, other):
        init_keys(d)
    allowed = keys_dir(box) / "authorized"
    public = zmq.auth.load_certificate(keys_dir(guest) / "server.key")[0]
    allow = AllowList(allowed).load()
    assert public not in allow.keys
    allow.admit("grid-guest", public.decode(), "admin")
    assert asyncio.run(allow.callback("*", public))
    assert AllowList(allowed).load().scopes[public] == "admin"  # kept across restarts
    shutil.copy(keys_dir(guest) / "server.key", allowed / "by-hand.key")
    deleted = allow.revoke(public.decode())
    assert sorted(p.name for p in deleted) == ["by-hand.key", "grid-guest.key"]
    assert not asyncio.run(allow.callback("*", public))
    assert public.decode() in allow.revoked
    # A key file copied in while the box runs admits its client at the next handshake.
    late = zmq.auth.load_certificate(keys_dir(other) / "server.key")[0]
    shutil.copy(keys_dir(other) / "server.key", allowed / "other.key")
    assert asyncio.run(allow.callback("*", late))
