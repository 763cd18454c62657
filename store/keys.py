"""Every Redis key the platform uses, documented in this one place.

health:{ns}:expected hash  name -> Expectation JSON   (HealthActor registrations; ns = RAY_NAMESPACE)
health:{ns}:records  hash  name -> Record JSON        (last ticks, restarts, errors)
schedule:{id}        hash  the schedule's JSON fields as strings      (contract)
events:{tenant_id}   stream  the tenant's events                      (contract)
"""

from __future__ import annotations


def health_expected(namespace: str) -> str:
    return f"health:{namespace}:expected"


def health_records(namespace: str) -> str:
    return f"health:{namespace}:records"


def schedule(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


def events(tenant_id: str) -> str:
    return f"events:{tenant_id}"
