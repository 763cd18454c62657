"""The API's context: what every handler reads, built once from Settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from api.backend import Backend
from api.hub import Hub
from settings import Settings
from store.quotas import Share, shares
from store.secrets import SecretBox


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
    workspace_ttl_s: float
    events_max_per_tenant: int
    quotas: Mapping[str, float]  # every tenant's, unless overridden (store.quotas)

    async def share(self, tenant_id: str) -> Share:
        """The tenant's effective quotas and weight, read now."""
        return (await shares(self.redis, self.quotas, [tenant_id]))[tenant_id]

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
            workspace_ttl_s=settings.workspace_ttl_s,
            events_max_per_tenant=settings.events_max_per_tenant,
            quotas=settings.quotas(),
        )


def context(connection: HTTPConnection) -> ApiContext:
    """The context of the app serving this request or WebSocket."""
    return connection.app.state.context
