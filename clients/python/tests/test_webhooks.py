"""verify_webhook against the reference implementation (issue #19): the `standardwebhooks` package
from PyPI verifies the webhooks the real agentd sends, our helper verifies messages that package
signs, and both reject a tampered body, an old timestamp and a wrong secret."""

from __future__ import annotations

import base64
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks

import agentd
from agentd.v1 import webhook_pb2
from conftest import KEY_A, Server

Delivery = tuple[dict[str, str], bytes]


class _Receiver:
    """An HTTP server on loopback that records each POST's headers and raw body."""

    def __init__(self) -> None:
        self.got: queue.Queue[Delivery] = queue.Queue()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                got.put(({k: v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def next(self) -> Delivery:
        return self.got.get(timeout=30)


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = '[webhooks]\nallow_cidrs = ["127.0.0.1/32"]\nretry_base_ms = 50\n'
    s = Server(tmp_path_factory.mktemp("agentd-hooks") / "data", config=config)
    yield s
    s.stop()


def _random_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_agentd_webhooks_verify_with_standardwebhooks(hook_server: Server) -> None:
    rx = _Receiver()
    with agentd.Client(hook_server.address, api_key=KEY_A) as c:
        hook = c.webhooks.CreateWebhook(webhook_pb2.CreateWebhookRequest(url=rx.url))
        session = c.create_session({})
        job = c.submit(session.session_id, "hello").job_id
        c.wait(job)
        headers, body = rx.next()
    payload = standardwebhooks.Webhook(hook.secret).verify(body, headers)
    assert payload["type"] == "job.finished" and payload["data"]["job_id"] == job
    assert agentd.verify_webhook(hook.secret, headers, body) == payload

    tampered = body.replace(b"SUCCEEDED", b"FAILED")
    assert tampered != body
    wrong = _random_secret()
    for check in (
        lambda h, b: standardwebhooks.Webhook(hook.secret).verify(b, h),
        lambda h, b: agentd.verify_webhook(hook.secret, h, b),
    ):
        with pytest.raises(Exception, match="(?i)signature"):
            check(headers, tampered)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(wrong).verify(body, headers)
    with pytest.raises(agentd.WebhookVerificationError):
        agentd.verify_webhook(wrong, headers, body)
    # Received long ago (a replay): both refuse it, whatever the signature.
    later = time.time() + 3600
    with pytest.raises(agentd.WebhookVerificationError, match="too old"):
        agentd.verify_webhook(hook.secret, headers, body, now=later)


def test_standardwebhooks_messages_verify_with_ours() -> None:
    secret = _random_secret()
    them = standardwebhooks.Webhook(secret)
    body = '{"type":"job.finished","data":{"job_id":"job_1"}}'
    now = datetime.now(tz=timezone.utc)

    def headers(at: datetime, s: standardwebhooks.Webhook = them, data: str = body) -> dict[str, str]:
        return {
            "Webhook-Id": "msg_1",
            "Webhook-Timestamp": str(int(at.timestamp())),
            "Webhook-Signature": s.sign("msg_1", at, data),
        }

    assert agentd.verify_webhook(secret, headers(now), body.encode()) == {
        "type": "job.finished",
        "data": {"job_id": "job_1"},
    }
    # Our signature is theirs, byte for byte.
    ts = int(now.timestamp())
    assert agentd.sign_webhook(secret, "msg_1", ts, body) == them.sign("msg_1", now, body)
    # A rotated secret's overlap: several signatures, one of them ours.
    other = standardwebhooks.Webhook(_random_secret())
    two = headers(now)
    two["Webhook-Signature"] = headers(now, other)["Webhook-Signature"] + " " + two["Webhook-Signature"]
    agentd.verify_webhook(secret, two, body)

    cases = {
        "tampered body": (headers(now), body.replace("job_1", "job_2")),
        "old timestamp": (headers(now - timedelta(minutes=10)), body),
        "future timestamp": (headers(now + timedelta(minutes=10)), body),
        "wrong secret": (headers(now, other), body),
        "no signature": ({"webhook-id": "msg_1", "webhook-timestamp": str(ts)}, body),
    }
    for name, (h, b) in cases.items():
        with pytest.raises(agentd.WebhookVerificationError):
            agentd.verify_webhook(secret, h, b)
            pytest.fail(f"accepted: {name}")
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            them.verify(b, h)
            pytest.fail(f"they accepted: {name}")


def test_a_bad_secret_is_an_error_not_a_match() -> None:
    with pytest.raises(agentd.WebhookVerificationError):
        agentd.verify_webhook("whsec_!!!", {"webhook-id": "a", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,x"}, b"{}")
