"""Item isolation: a failing item never stops the others; quarantine and release."""

from __future__ import annotations

import asyncio

import pytest

from actors.runtime.isolation import ItemGuard


class Transient(Exception):
    pass


async def test_one_bad_item_does_not_stop_the_tick_and_is_quarantined_after_three() -> None:
    quarantined: list[tuple] = []

    async def on_quarantine(key, error):
        quarantined.append((key, error))

    guard = ItemGuard(on_quarantine=on_quarantine)
    done: list[str] = []

    async def work(key: str) -> None:
        if key == "bad":
            raise ValueError("corrupt row")
        done.append(key)

    for _ in range(5):
        for key in ("a", "bad", "b"):
            await guard.run(key, lambda k=key: work(k), version=1)
    assert done == ["a", "b"] * 5
    assert guard.quarantined == 1
    assert quarantined == [("bad", "ValueError: corrupt row")]
    record = guard.record("bad")
    assert record is not None and record.failures == 3 and record.last_error == "ValueError: corrupt row"
    skipped = await guard.run("bad", lambda: work("bad"), version=1)
    assert skipped.skipped and not skipped.ok


async def test_success_resets_the_count() -> None:
    guard = ItemGuard()
    fail = [True, True, False, True, True]
    for f in fail:

        async def work(f=f):
            if f:
                raise RuntimeError("x")

        await guard.run("k", work)
    assert guard.quarantined == 0
    assert guard.record("k").failures == 2


async def test_changed_item_and_operator_release_lift_quarantine() -> None:
    guard = ItemGuard(max_failures=1)

    async def bad():
        raise RuntimeError("x")

    async def good():
        return 42

    await guard.run("k", bad, version="v1")
    assert guard.quarantined == 1
    assert (await guard.run("k", good, version="v1")).skipped
    outcome = await guard.run("k", good, version="v2")
    assert outcome.ok and outcome.value == 42
    assert guard.quarantined == 0
    await guard.run("k", bad, version="v2")
    assert guard.release("k") is True
    assert (await guard.run("k", good, version="v2")).ok


async def test_transient_errors_propagate_to_the_recover_loop() -> None:
    guard = ItemGuard(propagate=(Transient,))

    async def work():
        raise Transient("redis gone")

    with pytest.raises(Transient):
        await guard.run("k", work)
    assert guard.record("k") is None


async def test_hung_item_times_out_as_its_own_failure() -> None:
    guard = ItemGuard(timeout_s=0.01, max_failures=1)

    async def hang():
        await asyncio.Event().wait()

    outcome = await guard.run("slow", hang)
    assert not outcome.ok and outcome.quarantined_now
    assert outcome.error == "TimeoutError"


async def test_failing_quarantine_callback_does_not_fail_the_tick() -> None:
    async def broken(key, error):
        raise RuntimeError("event stream down")

    guard = ItemGuard(max_failures=1, on_quarantine=broken)

    async def bad():
        raise ValueError("x")

    outcome = await guard.run("k", bad)
    assert outcome.quarantined_now and guard.quarantined == 1


async def test_a_failure_found_without_running_work_counts_the_same() -> None:
    quarantined: list[str] = []

    async def on_quarantine(key, error):
        quarantined.append(error)

    guard = ItemGuard(on_quarantine=on_quarantine)
    unreadable = TypeError("WRONGTYPE not a hash")
    outcomes = [await guard.fail("w1", unreadable, version="v1") for _ in range(4)]
    assert [o.ok for o in outcomes] == [False] * 4
    assert [o.quarantined_now for o in outcomes] == [False, False, True, False]
    assert outcomes[3].skipped  # quarantined at this version: not counted again
    assert quarantined == ["TypeError: WRONGTYPE not a hash"]
    assert guard.record("w1").failures == 3  # type: ignore[union-attr]
    # The record changed (a new version): released, and its work runs again.
    ran = await guard.run("w1", lambda: asyncio.sleep(0), version="v2")
    assert ran.ok and guard.quarantined == 0 and guard.record("w1") is None


async def test_run_on_a_record_that_could_not_be_read_fails_the_item_only() -> None:
    guard = ItemGuard()
    seen: list[dict] = []

    async def work(record: dict) -> str:
        seen.append(record)
        return record["name"]

    ok = await guard.run_on("a", {"name": "alpha"}, work, version=lambda r: r["name"])
    unreadable = await guard.run_on("b", TypeError("WRONGTYPE"), work, version=lambda r: r["name"])
    assert (ok.ok, ok.value) == (True, "alpha") and seen == [{"name": "alpha"}]
    assert not unreadable.ok and unreadable.error == "TypeError: WRONGTYPE"
    assert guard.record("b").failures == 1  # type: ignore[union-attr]


async def test_an_operator_lift_leaves_an_item_that_is_only_failing_alone() -> None:
    guard = ItemGuard(max_failures=2)

    async def bad():
        raise RuntimeError("x")

    await guard.run("k", bad)
    assert guard.lift("k") is False  # failing once is not quarantine: the count stays
    record = guard.record("k")
    assert record is not None and record.failures == 1
    await guard.run("k", bad)
    assert guard.quarantined == 1 and guard.lift("k") is True and guard.record("k") is None
