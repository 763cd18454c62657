"""FairQueue: weighted fair order across tenants, without Ray or Redis."""

from __future__ import annotations

from collections import Counter

from actors.fair import FairQueue


def test_backlogged_tenants_share_in_proportion_to_their_weights_one_slot_at_a_time() -> None:
    fair = FairQueue()
    backlogs = {"a": list(range(1000)), "b": list(range(1000))}
    got: Counter[str] = Counter()
    for _ in range(400):  # capacity frees one slot at a time: passes carry over between calls
        ((tenant, _),) = fair.order(backlogs, {"a": 16, "b": 16}, {"a": 1, "b": 3}, 1)
        got[tenant] += 1
    assert got == {"a": 100, "b": 300}


def test_a_huge_backlog_gets_no_more_than_a_small_one() -> None:
    picked = FairQueue().order({"noisy": list(range(500)), "quiet": [1, 2]}, {"noisy": 500, "quiet": 500}, {}, 4)
    assert Counter(t for t, _ in picked) == {"noisy": 2, "quiet": 2}


def test_each_tenant_keeps_its_own_order_and_room() -> None:
    picked = FairQueue().order({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}, {"a": 2, "b": 5}, {}, 10)
    assert [item for t, item in picked if t == "a"] == ["a1", "a2"]  # room 2
    assert [item for t, item in picked if t == "b"] == ["b1", "b2"]
    assert FairQueue().order({"a": ["a1"]}, {"a": 0}, {}, 10) == []  # at its cap: nothing


def test_a_tenant_that_was_idle_neither_catches_up_nor_falls_behind() -> None:
    fair = FairQueue()
    busy = {"a": list(range(1000))}
    for _ in range(100):
        fair.order(busy, {"a": 10}, {}, 1)
    both = {"a": list(range(1000)), "late": list(range(1000))}
    got = Counter(t for t, _ in fair.order(both, {"a": 100, "late": 100}, {}, 10))
    assert got == {"a": 5, "late": 5}
