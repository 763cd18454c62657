"""Platform settings, read once from the environment and validated at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet


def _flag(environ: Mapping[str, str], key: str, default: bool) -> bool:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def _number(environ: Mapping[str, str], key: str, default: float, *, minimum: float) -> float:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ValueError(f"{key} must be a finite number >= {minimum:g}, got {raw!r}")
    return value


def _port(environ: Mapping[str, str], key: str, default: int) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{key} must be a TCP port 1-65535, got {raw!r}")
    return int(raw)


def _base_url(environ: Mapping[str, str], key: str, default: str) -> str:
    raw = _text(environ, key)
    if raw is None:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{key} must be an http(s) URL with a host and no query, got {raw!r}")
    return raw.rstrip("/")


def is_fernet_key(value: str) -> bool:
    """Whether `value` is a Fernet key (32 bytes, url-safe base64), or several, comma-separated."""
    keys = [k.strip() for k in value.split(",")]
    try:
        for key in keys:
            Fernet(key.encode())
    except ValueError:
        return False
    return bool(keys)


def _fernet_key(environ: Mapping[str, str], key: str) -> str | None:
    raw = _text(environ, key)
    if raw is not None and not is_fernet_key(raw):
        raise ValueError(f"{key} must be Fernet keys (32 bytes, url-safe base64), comma-separated: the first seals")
    return raw


def _node(environ: Mapping[str, str], key: str) -> str:
    raw = _text(environ, key)
    if raw is None or raw == "head":
        return "head"
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if len(raw) == 56 and all(c in "0123456789abcdef" for c in raw.lower()):
        return raw.lower()
    raise ValueError(f"{key} must be 'head', a node's IP address or a Ray node id (56 hex digits), got {raw!r}")


def _cidrs(environ: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Comma-separated CIDRs, normalized (`10.1.2.3/8` is `10.0.0.0/8`); ValueError naming the key."""
    networks = []
    for item in (part.strip() for part in (environ.get(key) or "").split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{key}: {item!r} is not a CIDR such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(networks)


def _nameserver(environ: Mapping[str, str], key: str) -> str | None:
    raw = _text(environ, key)
    if raw is None:
        return None
    host, _, port = raw.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"{key} must be a DNS server as <ip>:<port> (e.g. 10.0.0.2:53), got {raw!r}") from None
    return raw


def _text(environ: Mapping[str, str], key: str) -> str | None:
    raw = environ.get(key)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def _count(environ: Mapping[str, str], key: str, default: int) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{key} must be a whole number >= 1, got {raw!r}")
    return int(raw)


# API_HOST=node: each API actor listens on the address of the node it runs on (Ray's node IP).
NODE_HOST = "node"

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _bytes(environ: Mapping[str, str], key: str) -> int | None:
    """A size such as `512mib`, `2gb` or `1048576` (at least 1 MiB); None when unset."""
    raw = _text(environ, key)
    if raw is None:
        return None
    value = raw.strip().lower().replace(" ", "")
    number = value.rstrip("kmgib")
    unit = value[len(number) :]
    if not number.isdigit() or unit not in _UNITS or int(number) * _UNITS[unit] < 1024**2:
        raise ValueError(f"{key} must be a size of at least 1 MiB such as 512mib, 2gib or 1073741824, got {raw!r}")
    return int(number) * _UNITS[unit]


@dataclass(frozen=True)
class Settings:
    """Everything the platform reads from its environment; other modules receive this."""

    ray_address: str | None = None
    ray_namespace: str = "supervised"
    redis_url: str | None = None
    data_dir: Path = Path(".data")
    api_host: str = "127.0.0.1"  # or NODE_HOST: each API actor on its own node's address
    api_port: int = 8080
    api_node: str = "head"
    api_per_node: bool = False  # an API actor on every node, each reading its clients' tenants' streams
    admin_token: str | None = field(default=None, repr=False)
    enable_fault_injection: bool = False
    metrics_export_port: int | None = None
    drain_timeout_s: float = 2.5
    workspace_ttl_s: float = 90.0
    fire_timeout_s: float = 30.0
    events_max_per_tenant: int = 100_000
    ws_queue_size: int = 10_000
    liveness_scan_interval_s: float = 10.0
    restart_debounce_s: float = 60.0
    health_sweep_interval_s: float = 15.0
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    channel_secret_key: str | None = field(default=None, repr=False)
    telegram_api_base: str = "https://api.telegram.org"
    slack_api_base: str = "https://slack.com/api"
    telegram_poll_timeout_s: float = 25.0
    channel_reply_timeout_s: float = 60.0
    egress_allow_cidrs: tuple[str, ...] = ()
    egress_max_response_bytes: int = 1024 * 1024
    egress_nameserver: str | None = None
    scheduler_fires_in_flight: int = 512
    tenant_fires_in_flight: int = 16
    tenant_relays_in_flight: int = 16
    tenant_max_workspaces: int = 1_000
    tenant_max_schedules: int = 10_000
    tenant_max_channels: int = 100
    tenant_max_ws_connections: int = 100
    tenant_events_per_s: float = 100.0
    redis_maxmemory: int | None = None  # bytes, embedded Redis only; None: a quarter of the machine's memory
    scheduler_replicas: int = 1
    channel_manager_replicas: int = 1
    liveness_replicas: int = 1  # the workspace liveness monitor's, and the health sweep's
    replica_cpus: float = 0.25  # what each replica (of a subsystem run as more than one) asks Ray for
    shard_lease_s: float = 10.0  # a replica's hold on a shard without renewal (store.shards)

    def quotas(self) -> dict[str, float]:
        """Every tenant's quotas unless an admin overrides them (PATCH /admin/tenants/{id})."""
        return {
            "workspaces": self.tenant_max_workspaces,
            "schedules": self.tenant_max_schedules,
            "channels": self.tenant_max_channels,
            "ws_connections": self.tenant_max_ws_connections,
            "events_per_s": self.tenant_events_per_s,
            "fires_in_flight": self.tenant_fires_in_flight,
            "relays_in_flight": self.tenant_relays_in_flight,
        }

    @property
    def api_url(self) -> str:
        """The API's URL; with API_HOST=node, each API's is on its own node (`api_url_on`)."""
        return self.api_url_on(self.api_host)

    def api_url_on(self, host: str) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.api_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raises ValueError naming the first bad key."""
        env = os.environ if environ is None else environ
        d = cls()  # the defaults, written once: in the fields above
        redis_url = _text(env, "REDIS_URL")
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if redis_url is not None and not redis_url.startswith(schemes):
            raise ValueError(f"REDIS_URL must start with one of {', '.join(schemes)}, got {redis_url!r}")
        namespace = _text(env, "RAY_NAMESPACE") or d.ray_namespace
        if not namespace.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"RAY_NAMESPACE must be letters, digits, '-' or '_', got {namespace!r}")
        host = _text(env, "API_HOST") or d.api_host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host not in ("localhost", NODE_HOST):
                raise ValueError(
                    f"API_HOST must be an IP address, 'localhost' or '{NODE_HOST}' (the address of the node "
                    f"each API actor runs on), got {host!r}"
                ) from None
        token = _text(env, "ADMIN_TOKEN")
        if token is not None and len(token) < 16:
            raise ValueError("ADMIN_TOKEN must be at least 16 characters")
        metrics_port = _port(env, "METRICS_EXPORT_PORT", 0) or None
        return cls(
            ray_address=_text(env, "RAY_ADDRESS"),
            ray_namespace=namespace,
            redis_url=redis_url,
            data_dir=Path(_text(env, "DATA_DIR") or d.data_dir),
            api_host=host,
            api_port=_port(env, "API_PORT", d.api_port),
            api_node=_node(env, "API_NODE"),
            api_per_node=_flag(env, "API_PER_NODE", d.api_per_node),
            admin_token=token,
            enable_fault_injection=_flag(env, "ENABLE_FAULT_INJECTION", d.enable_fault_injection),
            metrics_export_port=metrics_port,
            drain_timeout_s=_number(env, "DRAIN_TIMEOUT_S", d.drain_timeout_s, minimum=0.1),
            workspace_ttl_s=_number(env, "WORKSPACE_TTL_S", d.workspace_ttl_s, minimum=1.0),
            fire_timeout_s=_number(env, "FIRE_TIMEOUT_S", d.fire_timeout_s, minimum=0.1),
            events_max_per_tenant=int(_number(env, "EVENTS_MAX_PER_TENANT", d.events_max_per_tenant, minimum=1)),
            ws_queue_size=int(_number(env, "WS_QUEUE_SIZE", d.ws_queue_size, minimum=1)),
            liveness_scan_interval_s=_number(env, "LIVENESS_SCAN_INTERVAL_S", d.liveness_scan_interval_s, minimum=0.1),
            restart_debounce_s=_number(env, "RESTART_DEBOUNCE_S", d.restart_debounce_s, minimum=0),
            health_sweep_interval_s=_number(env, "HEALTH_SWEEP_INTERVAL_S", d.health_sweep_interval_s, minimum=0.1),
            ws_ping_interval_s=_number(env, "WS_PING_INTERVAL_S", d.ws_ping_interval_s, minimum=0.1),
            ws_ping_timeout_s=_number(env, "WS_PING_TIMEOUT_S", d.ws_ping_timeout_s, minimum=0.1),
            channel_secret_key=_fernet_key(env, "CHANNEL_SECRET_KEY"),
            telegram_api_base=_base_url(env, "TELEGRAM_API_BASE", d.telegram_api_base),
            slack_api_base=_base_url(env, "SLACK_API_BASE", d.slack_api_base),
            telegram_poll_timeout_s=_number(env, "TELEGRAM_POLL_TIMEOUT_S", d.telegram_poll_timeout_s, minimum=1),
            channel_reply_timeout_s=_number(env, "CHANNEL_REPLY_TIMEOUT_S", d.channel_reply_timeout_s, minimum=0.1),
            egress_allow_cidrs=_cidrs(env, "EGRESS_ALLOW_CIDRS"),
            egress_max_response_bytes=int(
                _number(env, "EGRESS_MAX_RESPONSE_BYTES", d.egress_max_response_bytes, minimum=1024)
            ),
            egress_nameserver=_nameserver(env, "EGRESS_NAMESERVER"),
            scheduler_fires_in_flight=_count(env, "SCHEDULER_FIRES_IN_FLIGHT", d.scheduler_fires_in_flight),
            tenant_fires_in_flight=_count(env, "TENANT_FIRES_IN_FLIGHT", d.tenant_fires_in_flight),
            tenant_relays_in_flight=_count(env, "TENANT_RELAYS_IN_FLIGHT", d.tenant_relays_in_flight),
            tenant_max_workspaces=_count(env, "TENANT_MAX_WORKSPACES", d.tenant_max_workspaces),
            tenant_max_schedules=_count(env, "TENANT_MAX_SCHEDULES", d.tenant_max_schedules),
            tenant_max_channels=_count(env, "TENANT_MAX_CHANNELS", d.tenant_max_channels),
            tenant_max_ws_connections=_count(env, "TENANT_MAX_WS_CONNECTIONS", d.tenant_max_ws_connections),
            tenant_events_per_s=_number(env, "TENANT_EVENTS_PER_S", d.tenant_events_per_s, minimum=0.01),
            redis_maxmemory=_bytes(env, "REDIS_MAXMEMORY"),
            scheduler_replicas=_count(env, "SCHEDULER_REPLICAS", d.scheduler_replicas),
            channel_manager_replicas=_count(env, "CHANNEL_MANAGER_REPLICAS", d.channel_manager_replicas),
            liveness_replicas=_count(env, "LIVENESS_REPLICAS", d.liveness_replicas),
            shard_lease_s=_number(env, "SHARD_LEASE_S", d.shard_lease_s, minimum=1.0),
            replica_cpus=_number(env, "REPLICA_CPUS", d.replica_cpus, minimum=0.0),
        )
