"""Checking the webhooks agentd sends (Standard Webhooks, https://www.standardwebhooks.com):
HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}`` keyed by the base64 part of the
endpoint's ``whsec_…`` secret, sent as ``v1,<base64>`` (several, space-separated, while a
rotated secret overlaps). A receiver calls :func:`verify_webhook` on the raw body before parsing
it; the timestamp bound stops replays of old messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
#: How far a message's timestamp may be from now, either way (the standard's five minutes).
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The message is not one signed by the secret, or its timestamp is out of bounds."""


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from e
    if not key:
        raise WebhookVerificationError("the secret is empty")
    return key


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``v1,<base64>`` signature of one message: what agentd puts in ``webhook-signature``."""
    data = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + data, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Checks a received webhook and returns its JSON payload (``{type, timestamp, data}``).

    ``headers`` are the request's headers (any case); ``body`` the raw body, unparsed. Raises
    :class:`WebhookVerificationError` when a header is missing, the timestamp is further than
    ``tolerance_seconds`` from ``now`` (default: the clock), or no ``v1`` signature matches.
    """
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sigs):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts)
    except ValueError as e:
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds") from e
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("message timestamp too new")
    want = sign_webhook(secret, msg_id, timestamp, body).encode()
    # Compare every candidate in constant time; a match anywhere in the list is enough.
    if not any(hmac.compare_digest(want, s.encode()) for s in sigs.split(" ") if s):
        raise WebhookVerificationError("no matching signature")
    data = body if isinstance(body, str) else body.decode()
    return json.loads(data)
