// verifyWebhook against the reference implementation (issue #19): the `standardwebhooks` package
// from npm verifies the webhooks the real agentd sends, our helper verifies messages that package
// signs, and both reject a tampered body, an old timestamp and a wrong secret.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import http from "node:http";
import { after, before, describe, test } from "node:test";

import { Webhook, WebhookVerificationError as TheirError } from "standardwebhooks";

import { WebhookVerificationError, createAgentdClient, signWebhook, verifyWebhook } from "../dist/index.js";
import { KEY_A, startServer } from "./harness.mjs";

const randomSecret = () => `whsec_${randomBytes(32).toString("base64")}`;

/** An HTTP server on loopback resolving each POST's headers and raw body, in order. */
async function startReceiver() {
  const got = [];
  const waiting = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(200).end();
      const d = { headers: req.headers, body: Buffer.concat(chunks) };
      const w = waiting.shift();
      if (w) w(d);
      else got.push(d);
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/hook`,
    next: () => (got.length ? Promise.resolve(got.shift()) : new Promise((r) => waiting.push(r))),
    close: () => srv.close(),
  };
}

describe("verifyWebhook (issue #19)", () => {
  let server;
  before(async () => {
    server = await startServer({ config: '[webhooks]\nallow_cidrs = ["127.0.0.1/32"]\nretry_base_ms = 50\n' });
  });
  after(() => server.stop());

  test("agentd's webhooks verify with standardwebhooks, and tampering is refused by both", async () => {
    const rx = await startReceiver();
    try {
      const c = createAgentdClient({ baseUrl: server.url, apiKey: KEY_A });
      const hook = await c.webhooks.createWebhook({ url: rx.url, events: [] });
      const session = await c.createSession({});
      const job = (await c.submit(session.sessionId, "hello")).jobId;
      await c.wait(job);
      const { headers, body } = await rx.next();
      const theirs = new Webhook(hook.secret).verify(body, headers);
      assert.equal(theirs.type, "job.finished");
      assert.equal(theirs.data.job_id, job);
      assert.deepEqual(verifyWebhook(hook.secret, headers, body), theirs);

      const tampered = Buffer.from(body.toString().replace("SUCCEEDED", "FAILED"));
      assert.notDeepEqual(tampered, body);
      assert.throws(() => new Webhook(hook.secret).verify(tampered, headers), TheirError);
      assert.throws(() => verifyWebhook(hook.secret, headers, tampered), WebhookVerificationError);
      const wrong = randomSecret();
      assert.throws(() => new Webhook(wrong).verify(body, headers), TheirError);
      assert.throws(() => verifyWebhook(wrong, headers, body), WebhookVerificationError);
      // Received an hour later (a replay): refused whatever the signature.
      assert.throws(() => verifyWebhook(hook.secret, headers, body, { now: Date.now() / 1000 + 3600 }), /too old/);
    } finally {
      rx.close();
    }
  });

  test("standardwebhooks' messages verify with ours, and both refuse the same bad ones", () => {
    const secret = randomSecret();
    const them = new Webhook(secret);
    const other = new Webhook(randomSecret());
    const body = '{"type":"job.finished","data":{"job_id":"job_1"}}';
    const now = new Date();
    const headers = (at, w = them, data = body) => ({
      "Webhook-Id": "msg_1",
      "Webhook-Timestamp": String(Math.floor(at.getTime() / 1000)),
      "Webhook-Signature": w.sign("msg_1", at, data),
    });
    assert.deepEqual(verifyWebhook(secret, headers(now), body), { type: "job.finished", data: { job_id: "job_1" } });
    // A fetch Headers object works as well as a plain one.
    assert.ok(verifyWebhook(secret, new Headers(headers(now)), Buffer.from(body)));
    // Our signature is theirs, byte for byte.
    assert.equal(signWebhook(secret, "msg_1", Math.floor(now.getTime() / 1000), body), them.sign("msg_1", now, body));
    // A rotated secret's overlap: several signatures, one of them ours.
    const two = headers(now);
    two["Webhook-Signature"] = `${headers(now, other)["Webhook-Signature"]} ${two["Webhook-Signature"]}`;
    verifyWebhook(secret, two, body);

    const cases = {
      "tampered body": [headers(now), body.replace("job_1", "job_2")],
      "old timestamp": [headers(new Date(now.getTime() - 600_000)), body],
      "future timestamp": [headers(new Date(now.getTime() + 600_000)), body],
      "wrong secret": [headers(now, other), body],
      "no signature": [{ "webhook-id": "msg_1", "webhook-timestamp": String(Math.floor(now.getTime() / 1000)) }, body],
    };
    for (const [name, [h, b]] of Object.entries(cases)) {
      assert.throws(() => verifyWebhook(secret, h, b), WebhookVerificationError, `accepted: ${name}`);
      assert.throws(() => them.verify(b, h), TheirError, `they accepted: ${name}`);
    }
    assert.throws(() => verifyWebhook("whsec_!!!", headers(now), body), WebhookVerificationError);
  });
});
