//! The webhook outbox's types and the SQL both backends run (migration 0014): endpoints, the
//! per-tenant cursor over the change sequence, deliveries claimed under a lease, and the attempt
//! log. Statements are written once with `$n` parameters; SQLite runs them as `?n`
//! ([`sqlite_sql`]). Only the claim differs (Postgres adds `FOR UPDATE SKIP LOCKED`).

use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Result};

/// A tenant's receiver. `old_secret` keeps signing (beside `secret`) until `old_secret_until`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEndpoint {
    pub id: String,
    pub tenant: TenantId,
    pub url: String,
    /// Event types it receives.
    pub events: Vec<String>,
    pub secret: String,
    pub old_secret: Option<String>,
    pub old_secret_until: Option<Timestamp>,
    pub created: Timestamp,
}

impl WebhookEndpoint {
    /// The secrets a message sent at `now` is signed with: the current one, and the previous one
    /// during its overlap.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.old_secret, self.old_secret_until)
            && now < until
        {
            out.push(old);
        }
        out
    }
}

/// A message for one receiver, to be put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub id: String,
    /// The endpoint's id, or `job:<job id>` for a job's own `webhook_url`.
    pub endpoint_key: String,
    pub url: String,
    /// The Standard Webhooks `webhook-id`: the same for every attempt and every receiver.
    pub msg_id: String,
    pub event_type: String,
    pub job_id: String,
    /// The JSON body, fixed when the message is enqueued.
    pub payload: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "PENDING",
            DeliveryState::Delivered => "DELIVERED",
            DeliveryState::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "PENDING" => Ok(DeliveryState::Pending),
            "DELIVERED" => Ok(DeliveryState::Delivered),
            "FAILED" => Ok(DeliveryState::Failed),
            _ => Err(Error::internal(
                "store: webhook_deliveries.state is unknown",
            )),
        }
    }
}

/// A message in the outbox and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub tenant: TenantId,
    pub endpoint_key: String,
    pub url: String,
    pub msg_id: String,
    pub event_type: String,
    pub job_id: String,
    pub payload: String,
    pub created: Timestamp,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt: Timestamp,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub finished: Option<Timestamp>,
}

/// One try at sending a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub time: Timestamp,
    /// The receiver's HTTP status; 0 when there was no answer.
    pub status: u16,
    pub latency_ms: u64,
    /// Empty on success; never holds a secret.
    pub error: String,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    /// Tried again at this time.
    Retry(Timestamp),
    Failed,
}

/// Which of a tenant's deliveries [`crate::store::Store::webhook_deliveries`] lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryFilter {
    pub endpoint_key: Option<String>,
    pub job_id: Option<String>,
}

/// A delivery with its attempts, oldest attempt first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryLog {
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// `$n` parameters as SQLite's numbered `?n` (SQLite would number `$n` by first appearance).
pub fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

pub const ENDPOINT_COLS: &str =
    "id, tenant, url, events, secret, old_secret, old_secret_until, created";

pub const DELIVERY_COLS: &str = "id, tenant, endpoint_key, url, msg_id, event_type, job_id, \
     payload, created, state, attempts, next_attempt, last_status, last_error, last_latency_ms, \
     finished";

/// Inserts an endpoint, or updates the URL, events and secret of one with the same id (config
/// endpoints are written at every start); its creation time stays.
pub const PUT_ENDPOINT: &str = "INSERT INTO webhook_endpoints (id, tenant, url, events, secret, \
     old_secret, old_secret_until, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events, \
     secret = excluded.secret, old_secret = excluded.old_secret, \
     old_secret_until = excluded.old_secret_until";

pub const LIST_ENDPOINTS: &str = "SELECT id, tenant, url, events, secret, old_secret, \
     old_secret_until, created FROM webhook_endpoints WHERE tenant = $1 ORDER BY created, id";

pub const DELETE_ENDPOINT: &str = "DELETE FROM webhook_endpoints WHERE tenant = $1 AND id = $2";

/// The current secret becomes the old one, valid until `$4`.
pub const ROTATE_SECRET: &str = "UPDATE webhook_endpoints SET old_secret = secret, \
     old_secret_until = $4, secret = $3 WHERE tenant = $1 AND id = $2 RETURNING id, tenant, url, \
     events, secret, old_secret, old_secret_until, created";

/// Tenants whose change sequence is ahead of their webhook cursor, and that cursor.
pub const BACKLOG: &str = "SELECT s.tenant, coalesce(w.seq, 0) FROM change_seqs s \
     LEFT JOIN webhook_cursors w ON w.tenant = s.tenant \
     WHERE s.last_seq > coalesce(w.seq, 0) ORDER BY s.tenant LIMIT $1";

/// Moves a tenant's cursor from `$2` to `$3`; changes no row when someone else moved it first.
pub const ADVANCE_CURSOR: &str = "INSERT INTO webhook_cursors (tenant, seq) VALUES ($1, $3) \
     ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq WHERE webhook_cursors.seq = $2";

pub const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (id, tenant, endpoint_key, url, \
     msg_id, event_type, job_id, payload, created, state, attempts, next_attempt) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'PENDING', 0, $9) \
     ON CONFLICT (endpoint_key, msg_id) DO NOTHING";

/// Claims due deliveries for `$2` until `$3` at time `$1`: at most `$5`, and per receiver only as
/// many as keep its unexpired leases at or under `$4`, so one slow receiver holds at most `$4`
/// senders. `{lock}` is Postgres's row locking clause (empty for SQLite).
pub fn claim_sql(lock: &str) -> String {
    format!(
        "WITH busy AS (SELECT endpoint_key, count(*) AS n FROM webhook_deliveries \
           WHERE state = 'PENDING' AND owner IS NOT NULL AND lease_until > $1 \
           GROUP BY endpoint_key), \
         cand AS (SELECT d.id, row_number() OVER (PARTITION BY d.endpoint_key \
             ORDER BY d.next_attempt, d.id) + coalesce(b.n, 0) AS rank \
           FROM webhook_deliveries d LEFT JOIN busy b ON b.endpoint_key = d.endpoint_key \
           WHERE d.state = 'PENDING' AND d.next_attempt <= $1 \
             AND (d.owner IS NULL OR d.lease_until <= $1)), \
         pick AS (SELECT id FROM webhook_deliveries WHERE id IN \
             (SELECT id FROM cand WHERE rank <= $4) \
           AND state = 'PENDING' AND (owner IS NULL OR lease_until <= $1) \
           ORDER BY next_attempt, id LIMIT $5 {lock}) \
         UPDATE webhook_deliveries SET owner = $2, lease_until = $3 \
         WHERE id IN (SELECT id FROM pick) RETURNING {DELIVERY_COLS}"
    )
}

pub const INSERT_ATTEMPT: &str = "INSERT INTO webhook_attempts (delivery_id, n, time, status, \
     latency_ms, error) SELECT id, attempts + 1, CAST($3 AS BIGINT), CAST($4 AS BIGINT), CAST($5 AS BIGINT), \
     CAST($6 AS TEXT) FROM webhook_deliveries \
     WHERE id = $1 AND owner = $2 AND state = 'PENDING'";

/// Records an attempt's outcome on a delivery `$2` still owns: state `$3`, next attempt `$4`,
/// finished `$8` (NULL while pending).
pub const FINISH_ATTEMPT: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, \
     state = $3, next_attempt = $4, owner = NULL, lease_until = NULL, last_status = $5, \
     last_error = $6, last_latency_ms = $7, finished = $8 \
     WHERE id = $1 AND owner = $2 AND state = 'PENDING'";

/// A tenant's deliveries, newest first; `$2`/`$3` filter by endpoint and job when not empty.
pub fn list_deliveries_sql() -> String {
    format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE tenant = $1 \
         AND ($2 = '' OR endpoint_key = $2) AND ($3 = '' OR job_id = $3) \
         ORDER BY created DESC, id DESC LIMIT $4"
    )
}

pub const LIST_ATTEMPTS: &str = "SELECT time, status, latency_ms, error FROM webhook_attempts \
     WHERE delivery_id = $1 ORDER BY n";

/// Column access both backends' rows offer, so rows are decoded once here.
pub trait Cols {
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
}

fn bad(col: &str) -> Error {
    Error::internal(format!("store: {col} is out of range"))
}

pub fn endpoint_from(r: &impl Cols) -> Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: r.text(0)?,
        tenant: TenantId(r.text(1)?),
        url: r.text(2)?,
        events: r
            .text(3)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        secret: r.text(4)?,
        old_secret: r.opt_text(5)?,
        old_secret_until: r.opt_int(6)?.map(Timestamp),
        created: Timestamp(r.int(7)?),
    })
}

pub fn delivery_from(r: &impl Cols) -> Result<Delivery> {
    let u = |v: i64, col: &str| u64::try_from(v).map_err(|_| bad(col));
    Ok(Delivery {
        id: r.text(0)?,
        tenant: TenantId(r.text(1)?),
        endpoint_key: r.text(2)?,
        url: r.text(3)?,
        msg_id: r.text(4)?,
        event_type: r.text(5)?,
        job_id: r.text(6)?,
        payload: r.text(7)?,
        created: Timestamp(r.int(8)?),
        state: DeliveryState::parse(&r.text(9)?)?,
        attempts: u32::try_from(r.int(10)?).map_err(|_| bad("webhook_deliveries.attempts"))?,
        next_attempt: Timestamp(r.int(11)?),
        last_status: r
            .opt_int(12)?
            .map(|s| u16::try_from(s).map_err(|_| bad("webhook_deliveries.last_status")))
            .transpose()?,
        last_error: r.opt_text(13)?,
        last_latency_ms: r
            .opt_int(14)?
            .map(|v| u(v, "webhook_deliveries.last_latency_ms"))
            .transpose()?,
        finished: r.opt_int(15)?.map(Timestamp),
    })
}

pub fn attempt_from(r: &impl Cols) -> Result<Attempt> {
    Ok(Attempt {
        time: Timestamp(r.int(0)?),
        status: u16::try_from(r.int(1)?).map_err(|_| bad("webhook_attempts.status"))?,
        latency_ms: u64::try_from(r.int(2)?).map_err(|_| bad("webhook_attempts.latency_ms"))?,
        error: r.text(3)?,
    })
}

/// The row values of an outcome: state, next attempt, finished.
pub fn outcome_cols(o: AttemptOutcome, now: Timestamp) -> (&'static str, i64, Option<i64>) {
    match o {
        AttemptOutcome::Delivered => (DeliveryState::Delivered.as_str(), now.0, Some(now.0)),
        AttemptOutcome::Retry(at) => (DeliveryState::Pending.as_str(), at.0, None),
        AttemptOutcome::Failed => (DeliveryState::Failed.as_str(), now.0, Some(now.0)),
    }
}
