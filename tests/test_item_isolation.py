"""One tenant's bad data never takes a subsystem down for the other tenants (end to end)."""

from __future__ import annotations

from tests.support import Platform, wait_for


def test_poison_tenant_is_quarantined_and_the_others_keep_going(platform: Platform) -> None:
    with platform.ticker("tenants", tenants=("acme", "bad", "zeta"), poison=("bad",)) as ticker:
        sub = wait_for(lambda: (lambda s: s if s["quarantined"] == 1 else None)(platform.subsystem("tenants")), 30)
        assert sub["state"] == "RUNNING" and sub["healthy"] is True
        assert sub["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
        done = sub["progress"]["done"]
        assert done["bad"] == 0
        later = wait_for(
            lambda: (lambda d: d if d["acme"] > done["acme"] + 2 and d["zeta"] > done["zeta"] + 2 else None)(
                platform.subsystem("tenants")["progress"]["done"]
            ),
            30,
            what="other tenants keep being served",
        )
        assert later["bad"] == 0
        assert platform.get("/readyz")[0] == 200

        # An operator release lifts quarantine; the row is still bad, so it comes back.
        assert ticker.call_sync("release_item", "bad", timeout_s=10) is True
        assert ticker.call_sync("release_item", "bad", timeout_s=10) is False
        wait_for(lambda: platform.subsystem("tenants")["quarantined"] == 0, 10, what="released")
        wait_for(lambda: platform.subsystem("tenants")["quarantined"] == 1, 30, what="quarantined again")

        ticker.call_sync("heal", "bad", timeout_s=10)  # the row is fixed: a new version lifts quarantine
        wait_for(
            lambda: (lambda s: s if s["quarantined"] == 0 and s["progress"]["done"]["bad"] > 0 else None)(
                platform.subsystem("tenants")
            ),
            30,
            what="healed tenant served again",
        )
