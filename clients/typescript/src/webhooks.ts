// Checking the webhooks agentd sends (Standard Webhooks, https://www.standardwebhooks.com):
// HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` keyed by the base64 part of the
// endpoint's `whsec_…` secret, sent as `v1,<base64>` (several, space-separated, while a rotated
// secret overlaps). A receiver calls verifyWebhook on the raw body before parsing it; the
// timestamp bound stops replays of old messages.
import { createHmac, timingSafeEqual } from "node:crypto";

export const WEBHOOK_SECRET_PREFIX = "whsec_";
/** How far a message's timestamp may be from now, either way (the standard's five minutes). */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

/** The message is not one signed by the secret, or its timestamp is out of bounds. */
export class WebhookVerificationError extends Error {
  override name = "WebhookVerificationError";
}

function secretKey(secret: string): Buffer {
  const raw = secret.startsWith(WEBHOOK_SECRET_PREFIX) ? secret.slice(WEBHOOK_SECRET_PREFIX.length) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(raw)) throw new WebhookVerificationError("the secret is not whsec_<base64>");
  return Buffer.from(raw, "base64");
}

function bytesOf(body: string | Uint8Array): Buffer {
  return typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

/** The `v1,<base64>` signature of one message: what agentd puts in `webhook-signature`. */
export function signWebhook(secret: string, msgId: string, timestamp: number, body: string | Uint8Array): string {
  const mac = createHmac("sha256", secretKey(secret));
  mac.update(`${msgId}.${timestamp}.`);
  mac.update(bytesOf(body));
  return `v1,${mac.digest("base64")}`;
}

/** Headers as a plain object (any case) or a fetch `Headers`. */
export type WebhookHeaders = Record<string, string | string[] | undefined> | { get(name: string): string | null };

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as { get?: unknown }).get === "function") {
    return (headers as { get(name: string): string | null }).get(name) ?? undefined;
  }
  for (const [k, v] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
    if (k.toLowerCase() === name) return Array.isArray(v) ? v.join(" ") : v;
  }
  return undefined;
}

/**
 * Checks a received webhook and returns its JSON payload (`{type, timestamp, data}`). `body` is
 * the raw body, unparsed. Throws WebhookVerificationError when a header is missing, the timestamp
 * is further than `toleranceSeconds` from `now` (seconds; default: the clock), or no `v1`
 * signature matches.
 */
export function verifyWebhook(
  secret: string,
  headers: WebhookHeaders,
  body: string | Uint8Array,
  opts: { toleranceSeconds?: number; now?: number } = {},
): unknown {
  const [id, ts, sigs] = ["webhook-id", "webhook-timestamp", "webhook-signature"].map((n) => header(headers, n));
  if (!id || !ts || !sigs) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  }
  if (!/^\d+$/.test(ts)) throw new WebhookVerificationError("webhook-timestamp is not a number of seconds");
  const timestamp = Number(ts);
  const now = opts.now ?? Date.now() / 1000;
  const tolerance = opts.toleranceSeconds ?? WEBHOOK_TOLERANCE_SECONDS;
  if (timestamp < now - tolerance) throw new WebhookVerificationError("message timestamp too old");
  if (timestamp > now + tolerance) throw new WebhookVerificationError("message timestamp too new");
  const want = Buffer.from(signWebhook(secret, id, timestamp, body));
  // Compared in constant time; a match anywhere in the list is enough.
  const match = sigs.split(" ").some((s) => {
    const got = Buffer.from(s);
    return got.length === want.length && timingSafeEqual(got, want);
  });
  if (!match) throw new WebhookVerificationError("no matching signature");
  return JSON.parse(bytesOf(body).toString("utf8"));
}
