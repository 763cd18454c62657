"""Metrics of the work, exported on Ray's metrics port (Prometheus sees them with a `ray_` prefix).

Labels are bounded: the subsystem, and a status, reason or direction from a fixed set; never
a tenant or an item id, so a platform with many tenants keeps a fixed number of series.
Counters count in the process that does the work (a restarted actor starts again at zero,
which `rate()` and `increase()` take as a reset). The alert rules in `alerts/` and the
dashboard in `dashboards/` read only these names and the HealthActor's gauges.
"""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Gauge, Histogram

# Seconds from a slot's due time to the start of its fire.
LATENESS_BOUNDARIES_S = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
FIRE_STATUSES = ("ok", "error")
DIRECTIONS = ("in", "out")


class Work:
    """The platform's work metrics, made once per process (a Ray metric belongs to its process)."""

    def __init__(self) -> None:
        by_subsystem = ("subsystem",)
        self.fires = Counter("scheduler_fires", "Schedule slots fired, by outcome", tag_keys=("subsystem", "status"))
        self.lateness = Histogram(
            "scheduler_fire_lateness_seconds",
            "Seconds from a slot's due time to the start of its fire",
            boundaries=LATENESS_BOUNDARIES_S,
            tag_keys=by_subsystem,
        )
        self.events_appended = Counter("events_appended", "Events appended to tenants' streams", tag_keys=by_subsystem)
        self.events_delivered = Counter(
            "events_delivered", "Events sent to WebSocket clients (one per client)", tag_keys=by_subsystem
        )
        self.websocket_clients = Gauge("websocket_clients", "WebSocket clients connected", tag_keys=by_subsystem)
        self.channel_messages = Counter(
            "channel_messages", "Chat messages taken in from and answered to chats", tag_keys=("subsystem", "direction")
        )
        self.offline_transitions = Counter(
            "workspace_offline_transitions", "Workspaces marked offline", tag_keys=by_subsystem
        )
        self.broadcaster_lag_events = Gauge(
            "broadcaster_lag_events", "Events appended and not yet handed to the API", tag_keys=by_subsystem
        )
        self.broadcaster_lag_seconds = Gauge(
            "broadcaster_lag_seconds", "Age of the oldest event not yet handed to the API", tag_keys=by_subsystem
        )


@cache
def work() -> Work:
    return Work()


class Exported:
    """Totals a subsystem keeps as plain numbers, exported as counters by their increase since the last call."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def increase(self, name: str, total: int) -> int:
        """How much `total` grew since the last call for `name` (all of it on the first)."""
        grown = total - self._seen.get(name, 0)
        self._seen[name] = total
        return max(0, grown)
