//! The `[webhooks]` section of the config file: the SSRF exceptions, which per-job URLs are
//! allowed and the secret that signs them, retries, concurrency, and endpoints fixed by the
//! operator (`[[webhooks.endpoints]]`). Secrets are never printed.

use super::ssrf::{Cidr, Guard};
use serde::Deserialize;
use std::time::Duration;

/// Event types a receiver may subscribe to.
pub const EVENT_TYPES: [&str; 3] = [EVENT_FINISHED, EVENT_STARTED, EVENT_PERMISSION];
/// A job reached a final state (any of them).
pub const EVENT_FINISHED: &str = "job.finished";
/// A job started running.
pub const EVENT_STARTED: &str = "job.started";
/// A job's agent asks for a permission (sent through [`super::Webhooks::permission_requested`]).
pub const EVENT_PERMISSION: &str = "job.permission_requested";
/// Sent by WebhookService/TestWebhook only.
pub const EVENT_TEST: &str = "webhook.test";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhooks {
    #[serde(default)]
    allow_cidrs: Vec<String>,
    /// URL prefixes a job's `webhook_url` must start with (`https://hooks.example.com/`).
    #[serde(default)]
    job_url_prefixes: Vec<String>,
    job_url_secret: Option<String>,
    retry_period_seconds: Option<u64>,
    retry_base_ms: Option<u64>,
    per_endpoint_concurrency: Option<usize>,
    max_concurrency: Option<usize>,
    timeout_seconds: Option<u64>,
    rotation_overlap_seconds: Option<u64>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    tenant: String,
    /// Stored as `cfg_<name>`.
    name: String,
    url: String,
    secret: String,
    #[serde(default)]
    events: Vec<String>,
}

/// An endpoint the operator configured.
#[derive(Clone, PartialEq)]
pub struct ConfigEndpoint {
    pub tenant: String,
    pub id: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
}

/// The validated `[webhooks]` settings.
#[derive(Clone)]
pub struct WebhookConfig {
    pub guard: Guard,
    pub job_url_prefixes: Vec<String>,
    pub job_url_secret: Option<String>,
    /// How long a message is retried before it is marked failed.
    pub retry_period: Duration,
    /// The first retry's delay; each next one doubles (with jitter), up to an hour.
    pub retry_base: Duration,
    pub per_endpoint_concurrency: usize,
    /// Deliveries in flight on this replica at once.
    pub max_concurrency: usize,
    pub timeout: Duration,
    /// How long a rotated-out secret still signs.
    pub rotation_overlap: Duration,
    pub endpoints: Vec<ConfigEndpoint>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            guard: Guard::default(),
            job_url_prefixes: Vec::new(),
            job_url_secret: None,
            retry_period: Duration::from_secs(3 * 24 * 3600),
            retry_base: Duration::from_secs(5),
            per_endpoint_concurrency: 4,
            max_concurrency: 64,
            timeout: Duration::from_secs(10),
            rotation_overlap: Duration::from_secs(24 * 3600),
            endpoints: Vec::new(),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "allow_cidrs {:?}, job_url_prefixes {:?}, job_url_secret {}, retry {}s from {}ms, \
             {} per endpoint, {} in flight, timeout {}s, {} endpoint(s), secrets <redacted>",
            self.guard.allow,
            self.job_url_prefixes,
            if self.job_url_secret.is_some() {
                "set"
            } else {
                "unset"
            },
            self.retry_period.as_secs(),
            self.retry_base.as_millis(),
            self.per_endpoint_concurrency,
            self.max_concurrency,
            self.timeout.as_secs(),
            self.endpoints.len()
        )
    }
}

/// Checks a receiver URL's form: http(s), a host, no credentials, bounded length.
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    if url.len() > 2048 {
        return Err("is longer than 2048 bytes".into());
    }
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    let auth = uri.authority().ok_or("has no host")?;
    if auth.as_str().contains('@') {
        return Err("must not carry credentials".into());
    }
    if auth.host().is_empty() {
        return Err("has no host".into());
    }
    Ok(uri)
}

/// Checks event type names; empty means every event type.
pub fn check_events(events: &[String]) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Ok(vec![EVENT_FINISHED.to_owned()]);
    }
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(format!("unknown event type {e:?} (known: {EVENT_TYPES:?})"));
        }
    }
    let mut out = events.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn resolve(file: Option<FileWebhooks>) -> Result<WebhookConfig, String> {
    let Some(f) = file else {
        return Ok(WebhookConfig::default());
    };
    let d = WebhookConfig::default();
    let mut allow = Vec::new();
    for c in &f.allow_cidrs {
        allow.push(Cidr::parse(c).ok_or_else(|| format!("webhooks.allow_cidrs: bad CIDR {c:?}"))?);
    }
    for p in &f.job_url_prefixes {
        check_url(p).map_err(|e| format!("webhooks.job_url_prefixes: {p:?} {e}"))?;
    }
    if let Some(s) = &f.job_url_secret
        && super::sign::secret_key(s).is_none()
    {
        return Err("webhooks.job_url_secret must be whsec_<base64>".into());
    }
    if !f.job_url_prefixes.is_empty() && f.job_url_secret.is_none() {
        return Err("webhooks.job_url_prefixes needs webhooks.job_url_secret to sign with".into());
    }
    let mut endpoints = Vec::new();
    for (i, e) in f.endpoints.into_iter().enumerate() {
        let bad = |m: String| format!("webhooks.endpoints[{i}]: {m}");
        check_url(&e.url).map_err(|m| bad(format!("url {m}")))?;
        if super::sign::secret_key(&e.secret).is_none() {
            return Err(bad("secret must be whsec_<base64>".into()));
        }
        if e.tenant.is_empty() || e.name.is_empty() || e.name.len() > 64 {
            return Err(bad("tenant and name (at most 64 bytes) are required".into()));
        }
        endpoints.push(ConfigEndpoint {
            tenant: e.tenant,
            id: format!("cfg_{}", e.name),
            url: e.url,
            secret: e.secret,
            events: check_events(&e.events).map_err(bad)?,
        });
    }
    Ok(WebhookConfig {
        guard: Guard { allow },
        job_url_prefixes: f.job_url_prefixes,
        job_url_secret: f.job_url_secret,
        retry_period: f
            .retry_period_seconds
            .map_or(d.retry_period, Duration::from_secs),
        retry_base: f
            .retry_base_ms
            .map_or(d.retry_base, |ms| Duration::from_millis(ms.max(1))),
        per_endpoint_concurrency: f
            .per_endpoint_concurrency
            .unwrap_or(d.per_endpoint_concurrency)
            .max(1),
        max_concurrency: f.max_concurrency.unwrap_or(d.max_concurrency).max(1),
        timeout: f
            .timeout_seconds
            .map_or(d.timeout, |s| Duration::from_secs(s.max(1))),
        rotation_overlap: f
            .rotation_overlap_seconds
            .map_or(d.rotation_overlap, Duration::from_secs),
        endpoints,
    })
}
