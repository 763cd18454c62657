"""Every Redis key the platform uses, documented in this one place.

health:expected      hash  name -> Expectation JSON       (HealthActor registrations)
health:records       hash  name -> Record JSON            (last ticks, restarts, errors)
schedule:{id}        hash  the schedule's JSON fields as strings      (contract)
events:{tenant_id}   stream  the tenant's events                      (contract)
"""

from __future__ import annotations

HEALTH_EXPECTED = "health:expected"
HEALTH_RECORDS = "health:records"


def schedule(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


def events(tenant_id: str) -> str:
    return f"events:{tenant_id}"
