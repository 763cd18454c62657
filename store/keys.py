"""Every Redis key the platform uses, documented in this one place.

The layout is ready for a Redis Cluster. Tenant work is split into SHARDS shards; a
tenant's shard is read from its id (`shard_of`), and every record a tenant owns gets an id
in its tenant's shard (`records.new_id(shard)`), so any record's key follows from its id
alone. Every key of a shard carries the shard's hash tag `{T}` (`tag(shard)`): a record,
its tenant's indexes and the shard's indexes sit in one hash slot, so every script and
transaction keeps its keys in one slot. The global indexes are split per shard. Each tag
hashes into the shard's own 1/SHARDS of the slot ring, so a Cluster's even split of slots
gives each primary an even share of shards.

Records ({T}: the tag of the id's shard):
tenant:{T}:{id}                       hash  id, name, created_at, token_sha256, quotas, weight
tenant:{T}:{id}:workspaces            set   the tenant's workspace ids
tenant:{T}:{id}:schedules             set   the tenant's schedule ids
tenant:{T}:{id}:channels              set   the tenant's channel ids
tenant:{T}:{id}:due                   zset  the tenant's enabled schedule ids -> next slot (unix seconds)
tenant:{T}:{id}:events_size           hash  bytes, added: the size of the tenant's event stream, kept by every append
tenant:{T}:{id}:event_rate            hash with a TTL  tokens, at: the tenant's POST /events token bucket
tenant:{T}:{id}:ws_connections        zset with a TTL  "<api>#<pid>:<n>" -> until when that WebSocket counts (Redis ms)
events:{T}:{tenant_id}                stream  the tenant's events                                    (contract)
workspace:{T}:{id}                    hash  id, tenant_id, name, url, a2a_version, restart_url, ...
workspace:{T}:{id}:alive              string with a TTL: set by each workspace heartbeat
workspace:{T}:{id}:restart_debounce   string with a TTL: a restart request was sent (RESTART_DEBOUNCE_S)
schedule:{T}:{id}                     hash  the schedule's JSON fields as strings                    (contract)
channel:{T}:{id}                      hash  id, tenant_id, workspace_id, type, config (Fernet-sealed JSON), status, ...
channel:{T}:{id}:inbox                stream  inbound messages not yet relayed (deleted once answered)
channel:{T}:{id}:offset               string  Telegram getUpdates offset: updates below it are in the inbox or ignored
channel:{T}:{id}:seen:{key}           string with a TTL: a Slack event id or message already accepted (retries dropped)

Per shard ({S}: the shard's tag; a record's entry is in the record's shard, a tenant's in the tenant's):
tenants:{S}                           set   the shard's tenant ids
schedules:{S}:due_tenants             zset  tenant id -> its earliest due slot (tenants with a due index)
schedules:{S}:inflight                zset  "{schedule id}:{slot}" -> lease expiry (unix seconds)
schedules:{S}:quarantined             set   ids of quarantined schedules (out of the due index)
channels:{S}                          set   the shard's channel ids (the channel manager reconciles them)
workspaces:{S}:online                 set   ids of workspaces whose status is online (the reconciliation scan)
workspaces:{S}:deadlines              zset  workspace id -> when its liveness key expires (unix seconds)
workspaces:{S}:probe_failures         hash  workspace id -> health probes failed in a row (the sweep's count)
workspaces:{S}:restarts               zset  workspace id -> when to send its restart request
broadcaster:{S}:{ns}:positions        hash  tenant id -> last stream id delivered to the API (ns = RAY_NAMESPACE)
lease:{S}:{ns}:{kind}                 hash  owner, token, expires, since, prev_owner, prev_end, released_by/_at:
                                            which replica of `kind` works the shard (store.shards; Redis ms)

Global (each used by one-key commands only, so its slot never meets another's):
tenant_token:{sha256}                 string  tenant id, looked up by the token's digest (the tenant hash confirms it)
telegram_bot:{bot id}                 hash  channel, at: the channel polling that bot (one poller per bot)
broadcaster:{ns}:started              string  when this deployment's broadcaster wrote its positions
members:{ns}:{kind}                   zset  replica name -> until when it is live (Redis ms): who shares the shards
incarnation:{ns}:{kind}:{replica}     string  counts the replica's processes: a lease owner is "<replica>#<n>"
health:{ns}:expected                  hash  name -> Expectation JSON   (HealthActor registrations)
health:{ns}:records                   hash  name -> Record JSON        (last ticks, restarts, errors)
layout                                string  the key layout's version (store.layout moves older ones)
channels:wake                         pubsub channel: a channel id whose inbox has new messages

Records made before this layout keep their ids, so their keys carry their own id's tag,
not always their tenant's: one slot per script still holds on a single Redis, which is
the only place such records can be (store.layout).
"""

from __future__ import annotations

import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SHARDS = 64
ALL_SHARDS = tuple(range(SHARDS))


def shard_of(record_id: str) -> int:
    """The shard of a tenant or record id: its first byte, modulo SHARDS (ids are hex, random).

    Anything else (a malformed id from a request) still names one shard, so it reads as
    a missing record rather than failing.
    """
    try:
        return int(record_id[:2], 16) % SHARDS
    except ValueError:
        return zlib.crc32(record_id.encode()) % SHARDS


def _tag_for(shard: int) -> str:
    """The first `s<shard>-<n>` whose hash slot lies in the shard's own part of the ring."""
    n = 0
    while key_slot(f"s{shard}-{n}".encode()) * SHARDS // REDIS_CLUSTER_HASH_SLOTS != shard:
        n += 1
    return f"{{s{shard}-{n}}}"


_TAGS = tuple(_tag_for(s) for s in ALL_SHARDS)


def tag(shard: int) -> str:
    """The hash tag (braces included) of every key of one shard."""
    return _TAGS[shard]


def _own(record_id: str) -> str:
    return _TAGS[shard_of(record_id)]


# -- records ----------------------------------------------------------------------------------


def tenant(tenant_id: str) -> str:
    return f"tenant:{_own(tenant_id)}:{tenant_id}"


def tenant_workspaces(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:workspaces"


def tenant_schedules(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:schedules"


def tenant_channels(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:channels"


def tenant_due(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:due"


def events_size(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:events_size"


def tenant_event_rate(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:event_rate"


def tenant_ws_connections(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}:ws_connections"


EVENTS_PREFIX = "events:"


def events(tenant_id: str) -> str:
    return f"{EVENTS_PREFIX}{_own(tenant_id)}:{tenant_id}"


def events_tenant(key: str) -> str:
    """The tenant id of an events stream's key."""
    return key.rpartition(":")[2]


def workspace(workspace_id: str) -> str:
    return f"workspace:{_own(workspace_id)}:{workspace_id}"


ALIVE_SUFFIX = ":alive"


def workspace_alive(workspace_id: str) -> str:
    return f"{workspace(workspace_id)}{ALIVE_SUFFIX}"


def alive_workspace(key: str) -> str | None:
    """The workspace id of a liveness key's name; None for any other key."""
    if not key.startswith("workspace:") or not key.endswith(ALIVE_SUFFIX):
        return None
    workspace_id = key.removesuffix(ALIVE_SUFFIX).rpartition(":")[2]
    return workspace_id if key == workspace_alive(workspace_id) else None


def workspace_restart_debounce(workspace_id: str) -> str:
    return f"{workspace(workspace_id)}:restart_debounce"


def schedule(schedule_id: str) -> str:
    return f"schedule:{_own(schedule_id)}:{schedule_id}"


def channel(channel_id: str) -> str:
    return f"channel:{_own(channel_id)}:{channel_id}"


def channel_inbox(channel_id: str) -> str:
    return f"{channel(channel_id)}:inbox"


def channel_offset(channel_id: str) -> str:
    return f"{channel(channel_id)}:offset"


def channel_seen(channel_id: str, key: str) -> str:
    return f"{channel(channel_id)}:seen:{key}"


# -- per shard --------------------------------------------------------------------------------


def tenants(shard: int) -> str:
    return f"tenants:{_TAGS[shard]}"


def schedules_due_tenants(shard: int) -> str:
    return f"schedules:{_TAGS[shard]}:due_tenants"


def schedules_inflight(shard: int) -> str:
    return f"schedules:{_TAGS[shard]}:inflight"


def schedules_quarantined(shard: int) -> str:
    return f"schedules:{_TAGS[shard]}:quarantined"


def channels(shard: int) -> str:
    return f"channels:{_TAGS[shard]}"


def workspaces_online(shard: int) -> str:
    return f"workspaces:{_TAGS[shard]}:online"


def workspaces_deadlines(shard: int) -> str:
    return f"workspaces:{_TAGS[shard]}:deadlines"


def workspaces_probe_failures(shard: int) -> str:
    return f"workspaces:{_TAGS[shard]}:probe_failures"


def workspaces_restarts(shard: int) -> str:
    return f"workspaces:{_TAGS[shard]}:restarts"


def broadcaster_positions(shard: int, namespace: str) -> str:
    return f"broadcaster:{_TAGS[shard]}:{namespace}:positions"


def shard_lease(shard: int, namespace: str, kind: str) -> str:
    return f"lease:{_TAGS[shard]}:{namespace}:{kind}"


# -- global -----------------------------------------------------------------------------------


def tenant_token(digest: str) -> str:
    return f"tenant_token:{digest}"


def telegram_bot(bot_id: str) -> str:
    return f"telegram_bot:{bot_id}"


def broadcaster_started(namespace: str) -> str:
    return f"broadcaster:{namespace}:started"


def shard_members(namespace: str, kind: str) -> str:
    return f"members:{namespace}:{kind}"


def shard_incarnation(namespace: str, kind: str, member: str) -> str:
    return f"incarnation:{namespace}:{kind}:{member}"


def health_expected(namespace: str) -> str:
    return f"health:{namespace}:expected"


def health_records(namespace: str) -> str:
    return f"health:{namespace}:records"


LAYOUT = "layout"
CHANNELS_WAKE = "channels:wake"
