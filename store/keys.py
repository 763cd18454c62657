"""Every Redis key the platform uses, documented in this one place.

health:{ns}:expected hash  name -> Expectation JSON   (HealthActor registrations; ns = RAY_NAMESPACE)
health:{ns}:records  hash  name -> Record JSON        (last ticks, restarts, errors)
tenant:{id}                  hash  id, name, created_at, token_sha256
tenant_token:{sha256}        string  tenant id, looked up by the token's digest
tenants                      set   every tenant id (the broadcaster reads their streams)
tenant:{id}:workspaces       set   the tenant's workspace ids
workspace:{id}               hash  id, tenant_id, name, url, a2a_version, restart_url, ...
workspace:{id}:alive         string with a TTL: set by each workspace heartbeat
workspace:{id}:restart_debounce string with a TTL: a restart request was sent (RESTART_DEBOUNCE_S)
workspaces:online            set   ids of workspaces whose status is online (the reconciliation scan reads it)
workspaces:deadlines         zset  workspace id -> when its liveness key expires (unix seconds; set by each heartbeat)
workspaces:probe_failures    hash  workspace id -> health probes failed in a row (the sweep's count)
workspaces:restarts          zset  workspace id -> when to send its restart request (queued by the offline transition)
tenant:{id}:schedules        set   the tenant's schedule ids
schedule:{id}                hash  the schedule's JSON fields as strings      (contract)
tenant:{id}:due              zset  the tenant's enabled schedule ids -> next slot (unix seconds)
schedules:due_tenants        zset  tenant id -> its earliest due slot (tenants with a due index)
schedules:due                zset  (before per-tenant due indexes) schedule id -> next slot; moved at start
schedules:inflight           zset  "{id}:{slot}" -> lease expiry (unix seconds)
schedules:quarantined        set   ids of quarantined schedules (out of the due index)
tenant:{id}:channels         set   the tenant's channel ids
tenant:{id}:events_size      hash  bytes, added: the size of the tenant's event stream, kept by every append
tenant:{id}:event_rate       hash with a TTL  tokens, at: the tenant's POST /events token bucket
channels                     set   every channel id (the channel manager reconciles them)
channel:{id}                 hash  id, tenant_id, workspace_id, type, config (Fernet-encrypted JSON), status, ...
channel:{id}:inbox           stream  inbound messages not yet relayed (deleted once answered)
channel:{id}:offset          string  Telegram getUpdates offset: updates below it are in the inbox or ignored
channel:{id}:seen:{key}      string with a TTL: a Slack event id or message already accepted (retries dropped)
events:{tenant_id}           stream  the tenant's events                      (contract)
channels:telegram_bots       hash  Telegram bot id -> the channel polling it (one poller per bot)
channels:wake                pubsub channel: a channel id whose inbox has new messages
broadcaster:{ns}:positions   hash  tenant id -> last stream id delivered to the API (ns = RAY_NAMESPACE)
"""

from __future__ import annotations


def health_expected(namespace: str) -> str:
    return f"health:{namespace}:expected"


def health_records(namespace: str) -> str:
    return f"health:{namespace}:records"


def broadcaster_positions(namespace: str) -> str:
    return f"broadcaster:{namespace}:positions"


def schedule(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


def events(tenant_id: str) -> str:
    return f"{EVENTS_PREFIX}{tenant_id}"


def tenant(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


def tenant_token(digest: str) -> str:
    return f"tenant_token:{digest}"


def tenant_workspaces(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:workspaces"


def tenant_schedules(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:schedules"


def workspace(workspace_id: str) -> str:
    return f"workspace:{workspace_id}"


def workspace_alive(workspace_id: str) -> str:
    return f"workspace:{workspace_id}:alive"


def workspace_restart_debounce(workspace_id: str) -> str:
    return f"workspace:{workspace_id}:restart_debounce"


def tenant_due(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:due"


def events_size(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:events_size"


def tenant_event_rate(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:event_rate"


def tenant_channels(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:channels"


def channel(channel_id: str) -> str:
    return f"channel:{channel_id}"


def channel_inbox(channel_id: str) -> str:
    return f"channel:{channel_id}:inbox"


def channel_offset(channel_id: str) -> str:
    return f"channel:{channel_id}:offset"


def channel_seen(channel_id: str, key: str) -> str:
    return f"channel:{channel_id}:seen:{key}"


TENANTS = "tenants"
CHANNELS = "channels"
CHANNELS_WAKE = "channels:wake"
TELEGRAM_BOTS = "channels:telegram_bots"
WORKSPACES_ONLINE = "workspaces:online"
WORKSPACES_RESTARTS = "workspaces:restarts"
WORKSPACES_DEADLINES = "workspaces:deadlines"
WORKSPACES_PROBE_FAILURES = "workspaces:probe_failures"
EVENTS_PREFIX = "events:"
SCHEDULES_DUE_LEGACY = "schedules:due"
SCHEDULES_DUE_TENANTS = "schedules:due_tenants"
SCHEDULES_INFLIGHT = "schedules:inflight"
SCHEDULES_QUARANTINED = "schedules:quarantined"
