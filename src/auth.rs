//! Authentication: API keys → tenants. Keys arrive as `authorization: Bearer <key>` or `x-api-key`
//! metadata. Only SHA-256 digests of keys are kept; the presented key's digest is compared with
//! every configured digest in constant time, so neither timing nor early exit reveals which key or
//! how much of it matched.

use crate::config::ApiKey;
use crate::domain::TenantId;
use crate::error::{Error, Reason};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The tenant used for every caller when authentication is off.
pub const DEFAULT_TENANT: &str = "default";

/// Resolves credentials to a tenant.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Vec<ApiKey>>,
}

impl Authenticator {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self {
            keys: Arc::new(keys),
        }
    }

    /// Whether keys are required at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant of the presented key. `authorization` is the raw header value, `x_api_key` the
    /// raw `x-api-key` value; either may be absent.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        x_api_key: Option<&str>,
    ) -> Result<TenantId, Error> {
        if !self.enabled() {
            return Ok(TenantId(DEFAULT_TENANT.to_owned()));
        }
        let key = match (authorization, x_api_key) {
            (Some(h), _) => {
                let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h, ""));
                if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
                    return Err(Error::Unauthenticated {
                        reason: Reason::InvalidCredentials,
                        message: "authorization metadata must be `Bearer <api key>`".into(),
                    });
                }
                rest.trim()
            }
            (None, Some(k)) => k.trim(),
            (None, None) => {
                return Err(Error::Unauthenticated {
                    reason: Reason::MissingCredentials,
                    message: "missing API key: send `authorization: Bearer <key>` or `x-api-key`"
                        .into(),
                });
            }
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found: Option<&ApiKey> = None;
        for k in self.keys.iter() {
            // Visit every key regardless of earlier matches.
            if bool::from(k.sha256.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found
            .map(|k| TenantId(k.tenant.clone()))
            .ok_or_else(|| Error::Unauthenticated {
                reason: Reason::InvalidCredentials,
                message: "invalid API key".into(),
            })
    }
}

/// Per-tenant request rate limit: a token bucket per tenant refilled at `rate` tokens per second
/// up to a burst of twice that. Cheap enough to run on every call.
#[derive(Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Arc<std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>>,
}

impl RateLimiter {
    /// `per_second == 0` disables limiting.
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            rate: f64::from(per_second),
            burst: 2.0 * f64::from(per_second),
            buckets: Arc::default(),
        })
    }

    /// Takes one token for `tenant`, or says how long until one is available.
    pub fn check(&self, tenant: &TenantId) -> Result<(), Error> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(tenant.0.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = std::time::Duration::from_secs_f64((1.0 - *tokens) / self.rate);
        Err(Error::ResourceExhausted {
            reason: Reason::RateLimited,
            message: format!(
                "tenant {:?} exceeded {} requests per second",
                tenant.0, self.rate
            ),
            retry_after: Some(wait.max(std::time::Duration::from_millis(1))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_refuses_with_retry_after() {
        let rl = RateLimiter::new(5).unwrap();
        let t = TenantId("a".into());
        for _ in 0..10 {
            assert!(rl.check(&t).is_ok());
        }
        match rl.check(&t) {
            Err(Error::ResourceExhausted {
                reason: Reason::RateLimited,
                retry_after: Some(d),
                ..
            }) => assert!(d <= std::time::Duration::from_millis(200)),
            other => panic!("{other:?}"),
        }
        assert!(
            rl.check(&TenantId("b".into())).is_ok(),
            "tenants are separate"
        );
        assert!(RateLimiter::new(0).is_none());
    }

    fn auth() -> Authenticator {
        Authenticator::new(vec![
            ApiKey {
                tenant: "a".into(),
                sha256: Sha256::digest(b"key-of-a-123").into(),
            },
            ApiKey {
                tenant: "b".into(),
                sha256: Sha256::digest(b"key-of-b-456").into(),
            },
        ])
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let a = auth();
        assert_eq!(
            a.authenticate(Some("Bearer key-of-a-123"), None).unwrap().0,
            "a"
        );
        assert_eq!(
            a.authenticate(Some("bearer key-of-b-456"), None).unwrap().0,
            "b"
        );
        assert_eq!(a.authenticate(None, Some("key-of-b-456")).unwrap().0, "b");
    }

    #[test]
    fn refuses_missing_wrong_and_malformed() {
        let a = auth();
        assert_eq!(
            a.authenticate(None, None).unwrap_err().reason(),
            Reason::MissingCredentials
        );
        assert_eq!(
            a.authenticate(Some("Bearer nope-nope"), None)
                .unwrap_err()
                .reason(),
            Reason::InvalidCredentials
        );
        assert_eq!(
            a.authenticate(Some("Basic key-of-a-123"), None)
                .unwrap_err()
                .reason(),
            Reason::InvalidCredentials
        );
    }

    #[test]
    fn no_keys_means_default_tenant() {
        let a = Authenticator::new(vec![]);
        assert_eq!(a.authenticate(None, None).unwrap().0, DEFAULT_TENANT);
    }
}
