//! The rows the store hands out and takes in.

use serde::Serialize;

/// Keyset pagination: items strictly after the cursor `after`, at most `limit` of them
/// (clamped to 1..=[`MAX_PAGE`]).
///
/// The cursor is the last item's id; for [`crate::Store::list_apis`] it is
/// [`ApiDoc::cursor`] (`"tenant/id"`), and with a tenant filter a bare API id is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    pub after: Option<&'a str>,
    pub limit: u32,
}

/// The largest page the store returns.
pub const MAX_PAGE: u32 = 1000;

impl<'a> Page<'a> {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Page { after: None, limit }
    }

    /// The page after the item with cursor `after`.
    pub fn after(after: &'a str, limit: u32) -> Self {
        Page {
            after: Some(after),
            limit,
        }
    }

    pub(crate) fn limit_i64(&self) -> i64 {
        i64::from(self.limit.clamp(1, MAX_PAGE))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A tenant admin token: only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub tenant: String,
    pub created_at: i64,
}

/// A registered API: the OpenAPI document exactly as submitted (JSON or YAML text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiDoc {
    pub tenant: String,
    pub id: String,
    pub document: String,
    pub content_type: String,
    pub updated_at: i64,
}

impl ApiDoc {
    /// The pagination cursor of this API in [`crate::Store::list_apis`]: `"tenant/id"`.
    pub fn cursor(&self) -> String {
        format!("{}/{}", self.tenant, self.id)
    }
}

/// A plan or a consumer: the admin layer owns the shape of `body`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    pub id: String,
    pub body: serde_json::Value,
    pub updated_at: i64,
}

/// An API key: `hash` is the caller's keyed hash (`"hmac-sha256:<hex>"`), `prefix` the part
/// shown to humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub consumer: String,
    pub hash: String,
    pub prefix: String,
    pub created_at: i64,
}

/// Everything a gateway node compiles, read in one transaction so it is consistent with
/// `version`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dynamic {
    pub version: i64,
    pub tenants: Vec<Tenant>,
    pub apis: Vec<ApiDoc>,
    pub plans: Vec<Entity>,
    pub consumers: Vec<Entity>,
    /// Active (not revoked) keys only.
    pub keys: Vec<KeyRow>,
}

/// One audited mutation. `id` is the change `version` zero-padded to 20 digits, so the audit
/// log sorts in commit order and paginates by id like everything else.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: String,
    pub version: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}
