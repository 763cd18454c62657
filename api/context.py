"""The API's context: what every handler reads, built once from Settings."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection

from api.backend import Backend
from api.hub import Hub
from settings import Settings
from store.quotas import Share, shares
from store.secrets import SecretBox

SHARE_TTL_S = 1.0
SHARE_CACHE_MAX = 100_000


@dataclass(frozen=True)
class ApiContext:
    """Everything the routes use besides the request; one per app, never changed."""

    backend: Backend
    redis: Any  # redis.asyncio.Redis
    hub: Hub
    secret_box: SecretBox
    admin_token: str
    namespace: str
    fault_injection: bool
    own_reader: bool  # this API reads its clients' streams itself (API_PER_NODE): no broadcaster to wait for
    workspace_ttl_s: float
    events_max_per_tenant: int
    quotas: Mapping[str, float]  # every tenant's, unless overridden (store.quotas)
    # tenant id -> (when read, its share): read at most once a second per tenant on the hot paths
    _shares: dict[str, tuple[float, Share]] = field(default_factory=dict, compare=False, repr=False)

    async def share(self, tenant_id: str) -> Share:
        """The tenant's effective quotas and weight, as read within the last SHARE_TTL_S."""
        now = time.monotonic()
        cached = self._shares.get(tenant_id)
        if cached is not None and now - cached[0] < SHARE_TTL_S:
            return cached[1]
        if len(self._shares) >= SHARE_CACHE_MAX:
            self._shares.clear()
        found = (await shares(self.redis, self.quotas, [tenant_id]))[tenant_id]
        self._shares[tenant_id] = (now, found)
        return found

    def forget_share(self, tenant_id: str) -> None:
        """An override changed here: the next request reads it (other API processes within SHARE_TTL_S)."""
        self._shares.pop(tenant_id, None)

    @classmethod
    def build(cls, settings: Settings, *, backend: Backend, redis: Any, admin_token: str) -> ApiContext:
        """The context of an API serving `settings`; `settings.channel_secret_key` must be set."""
        if not settings.channel_secret_key:
            raise ValueError("the API needs CHANNEL_SECRET_KEY (the driver sets it)")
        return cls(
            backend=backend,
            redis=redis,
            hub=Hub(settings.ws_queue_size),
            secret_box=SecretBox(settings.channel_secret_key),
            admin_token=admin_token,
            namespace=settings.ray_namespace,
            fault_injection=settings.enable_fault_injection,
            own_reader=settings.api_per_node,
            workspace_ttl_s=settings.workspace_ttl_s,
            events_max_per_tenant=settings.events_max_per_tenant,
            quotas=settings.quotas(),
        )


def context(connection: HTTPConnection) -> ApiContext:
    """The context of the app serving this request or WebSocket."""
    return connection.app.state.context
