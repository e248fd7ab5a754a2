//! State shared by every admin handler.

use crate::auth::Guard;
use crate::manage::Management;
use std::sync::Arc;
use tollgate_proxy::Gateway;

#[derive(Clone)]
pub struct AdminState {
    pub gateway: Gateway,
    /// The platform admin's token; `None` when the variable is unset, and then only tenant
    /// tokens (if any) are accepted.
    pub token: Option<Arc<str>>,
    /// The management plane; `None` when the gateway runs without a store.
    pub manage: Option<Arc<Management>>,
    pub guard: Arc<Guard>,
    /// Where this gateway listens (public, TLS, admin), as bound: registered APIs may not
    /// point there.
    pub own_addrs: Arc<[std::net::SocketAddr]>,
}

impl AdminState {
    /// The management plane, or a 503 problem when this gateway runs without a store.
    pub fn manage(&self) -> Result<&Arc<Management>, crate::error::ApiError> {
        self.manage.as_ref().ok_or_else(|| {
            crate::error::ApiError::new(
                tollgate_core::Kind::ServiceUnavailable,
                "this gateway runs without a store; the management API is off",
            )
        })
    }
}
