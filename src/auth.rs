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

#[cfg(test)]
mod tests {
    use super::*;

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
