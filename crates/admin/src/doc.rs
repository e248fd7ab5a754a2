//! The admin API's OpenAPI 3.1 document, generated from the handlers' annotations so it
//! cannot drift from the code. Served at `GET /admin/openapi.json`.

#![allow(dead_code)] // schema-only types: they describe bodies, nothing constructs them

use crate::routes::{consumers, plans, system, tenants, usage};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// URI of the problem type (docs/errors.md).
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub request_id: String,
    /// For 422: every problem with the submitted body.
    pub errors: Option<Vec<serde_json::Value>>,
}

/// The error answers of every admin operation, each an RFC 9457 problem. One set for all
/// operations: which of them a given operation can produce is said in docs/admin.md.
#[derive(utoipa::IntoResponses)]
pub enum AdminErrors {
    #[response(
        status = 400,
        description = "malformed request: query string, path, JSON syntax, cursor; for reload: the file was refused",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 401,
        description = "no token or an unknown one",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "a platform-only operation called with a tenant admin token",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "no such entity, or another tenant's",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "exists already, defined in the config file (read-only), or still in use",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    #[response(
        status = 412,
        description = "If-Match does not match the current ETag",
        content_type = "application/problem+json"
    )]
    PreconditionFailed(Problem),
    #[response(
        status = 413,
        description = "body over 4 MiB",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "body neither JSON nor (where accepted) YAML",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
    #[response(
        status = 422,
        description = "the body breaks the rules; `errors` lists each problem",
        content_type = "application/problem+json"
    )]
    Unprocessable(Problem),
    #[response(
        status = 429,
        description = "too many wrong tokens from this address",
        content_type = "application/problem+json"
    )]
    TooManyRequests(Problem),
    #[response(
        status = 503,
        description = "the store is unreachable; the gateway keeps serving its last configuration",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    pub status: String,
    pub config_generation: u64,
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<tenants::TenantView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiList {
    pub items: Vec<tenants::ApiView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PlanList {
    pub items: Vec<plans::PlanView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsumerList {
    pub items: Vec<consumers::ConsumerView>,
    pub next_cursor: Option<String>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Platform and tenant administration: tenants, registered APIs (OpenAPI documents), plans, consumers, keys and usage. Errors are RFC 9457 problem documents.",
    ),
    paths(
        system::reload, system::config_info, system::audit,
        tenants::list, tenants::create, tenants::get, tenants::delete, tenants::create_token,
        tenants::list_apis, tenants::put_api, tenants::get_api, tenants::delete_api,
        plans::list, plans::create, plans::get, plans::put, plans::delete,
        consumers::list, consumers::create, consumers::get, consumers::patch, consumers::delete,
        consumers::create_key, consumers::revoke_key, consumers::rotate_key, consumers::create_client_secret,
        usage::usage, usage::top_consumers,
    ),
    components(schemas(Problem, Reloaded, TenantList, ApiList, PlanList, ConsumerList, usage::Granularity)),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
struct AdminDoc;

/// The generated document.
pub fn document() -> utoipa::openapi::OpenApi {
    AdminDoc::openapi()
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
