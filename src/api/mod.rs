//! The API edge: the only module that knows tonic and prost. Each service decodes a request,
//! makes one core call, and encodes the answer; errors become statuses in `status` only.

mod attach;
pub mod codec;
pub mod convert;
mod file;
mod info;
mod job;
mod preset;
mod session;
pub mod status;
mod usage;
mod watch;
mod webhook;
pub mod wire;

pub use file::FileApi;
pub use info::ServerInfoApi;
pub use job::JobApi;
pub use preset::PresetApi;
pub use session::SessionApi;
pub use usage::UsageApi;
pub use webhook::WebhookApi;

use crate::auth::{Authenticator, RateLimiter};
use crate::domain::TenantId;
use crate::error::{Error, Reason};
use tonic::{Request, Status};

/// Resolves the caller's tenant from metadata, applies the tenant's rate limit, and stores the
/// tenant in the request's extensions.
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Authenticator,
    limiter: Option<RateLimiter>,
}

impl AuthInterceptor {
    pub fn new(auth: Authenticator, limiter: Option<RateLimiter>) -> Self {
        Self { auth, limiter }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata();
        let authorization = md.get("authorization").and_then(|v| v.to_str().ok());
        let x_api_key = md.get("x-api-key").and_then(|v| v.to_str().ok());
        let tenant = self
            .auth
            .authenticate(authorization, x_api_key)
            .map_err(status::to_status)?;
        if let Some(l) = &self.limiter {
            l.check(&tenant).map_err(status::to_status)?;
        }
        req.extensions_mut().insert(tenant);
        Ok(req)
    }
}

/// The tenant the interceptor resolved.
fn tenant<T>(req: &Request<T>) -> Result<TenantId, Status> {
    req.extensions().get::<TenantId>().cloned().ok_or_else(|| {
        status::to_status(Error::Unauthenticated {
            reason: Reason::MissingCredentials,
            message: "request did not pass authentication".into(),
        })
    })
}
