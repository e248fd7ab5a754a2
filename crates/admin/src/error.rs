//! The admin API's error: a gateway problem document (RFC 9457), so the management plane and
//! the data plane speak the same error language.

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tollgate_core::{GatewayError, Kind};
use tollgate_store::StoreError;

/// One problem with a submitted body; `pointer` is an RFC 6901 JSON pointer into it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug)]
pub struct ApiError(pub GatewayError);

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: Kind, detail: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self(GatewayError::new(kind, detail))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Kind::NotFound, format!("no {what} with this id"))
    }

    pub fn forbidden() -> Self {
        Self::new(Kind::Forbidden, "this route is for the platform admin only")
    }

    pub fn read_only(what: &str) -> Self {
        Self::new(
            Kind::Conflict,
            format!(
                "this {what} is defined in the config file and is read-only through the admin API"
            ),
        )
    }

    /// 422 listing every problem found.
    pub fn invalid(detail: &'static str, errors: Vec<FieldError>) -> Self {
        let list = serde_json::to_value(&errors).unwrap_or_default();
        Self(GatewayError::new(Kind::Unprocessable, detail).with_extension("errors", list))
    }

    pub fn bad_request(detail: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::new(Kind::BadRequest, detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::new(Kind::NotFound, "no such entity"),
            StoreError::Conflict => {
                Self::new(Kind::Conflict, "an entity with this id exists already")
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self(
                    GatewayError::new(
                        Kind::ServiceUnavailable,
                        "the store is unavailable; retry shortly",
                    )
                    .with_cause(other.to_string()),
                )
            }
        }
    }
}

tokio::task_local! {
    /// The admin request's id, so problem documents can name it like data-plane ones do.
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = REQUEST_ID
            .try_with(Clone::clone)
            .unwrap_or_else(|_| "-".to_owned());
        let resp = self.0.to_response(&id);
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, axum::body::Body::from(body))
    }
}
