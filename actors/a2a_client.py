"""A2A JSON-RPC 2.0 `message/send` (0.3) and `SendMessage` (1.0) requests, and their outcome."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from actors.egress import Egress, EgressError

_ids = itertools.count(1)


def request(version: str, message_id: str, text: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and JSON-RPC body of a user message in the workspace's protocol version."""
    if version == "0.3":
        message = {"messageId": message_id, "role": "user", "parts": [{"kind": "text", "text": text}]}
        return {}, {"jsonrpc": "2.0", "id": next(_ids), "method": "message/send", "params": {"message": message}}
    if version == "1.0":
        message = {"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": text}]}
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": "SendMessage", "params": {"message": message}}
        return {"A2A-Version": "1.0"}, body
    raise ValueError(f"unsupported A2A version {version!r}")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    result: Any = None


async def send(
    egress: Egress,
    url: str,
    version: str,
    message_id: str,
    text: str,
    timeout_s: float,
    auth_token: str | None = None,
) -> Outcome:
    """POST one message through the egress (with the workspace's bearer token, if it has one).

    Ok only for a 2xx carrying a JSON-RPC result. Never raises for the peer's faults.
    """
    headers, body = request(version, message_id, text)
    if auth_token:
        headers["Authorization"] = f"Bearer {auth_token}"
    try:
        answer = await egress.request("POST", url, json_body=body, headers=headers, timeout_s=timeout_s)
    except EgressError as exc:
        return Outcome(False, str(exc))
    if not answer.ok:
        return Outcome(False, f"HTTP {answer.status}")
    try:
        reply = answer.json()
    except ValueError as exc:  # the body was not JSON, or nested too deep
        return Outcome(False, f"invalid JSON-RPC response: {exc}")
    if not isinstance(reply, dict):
        return Outcome(False, "invalid JSON-RPC response: not an object")
    if reply.get("error") is not None:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        return Outcome(False, f"JSON-RPC error {error.get('code')}: {error.get('message')}")
    if "result" not in reply:
        return Outcome(False, "invalid JSON-RPC response: no result")
    return Outcome(True, result=reply["result"])


def reply_texts(result: Any) -> list[str]:
    """The text parts of an A2A reply, in order: a message's parts, or a task's artifacts and status message.

    Accepts both wire versions: 1.0 wraps the reply as {"message": ...} or {"task": ...};
    0.3 returns the Message or Task itself, tagged by `kind`.
    """
    if not isinstance(result, dict):
        return []
    reply = result.get("message") or result.get("task") or result
    if not isinstance(reply, dict):
        return []
    texts = _texts(reply.get("parts"))
    for artifact in reply.get("artifacts") or []:
        if isinstance(artifact, dict):
            texts += _texts(artifact.get("parts"))
    status = reply.get("status")
    if not texts and isinstance(status, dict) and isinstance(status.get("message"), dict):
        texts = _texts(status["message"].get("parts"))
    return texts


def _texts(parts: Any) -> list[str]:
    if not isinstance(parts, list):
        return []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
