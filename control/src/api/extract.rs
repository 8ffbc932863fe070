//! Extractors whose failures answer like every other refusal (JSON with a
//! sentence), instead of axum's plain-text defaults: the caller from the
//! bearer token, a JSON body, an id from the path, and `?all=`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::{AppState, MAX_BODY};
use crate::error::ApiError;
use crate::model::User;

/// The user whose token came in `Authorization: Bearer TOKEN`.
pub(crate) struct Caller(pub User);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::MissingToken)?;
        if state.proxies.identify(token).is_some() {
            return Err(ApiError::ProxyToken);
        }
        state.workflow.authenticate(token).await.map(Caller)
    }
}

/// The proxy whose token came in `Authorization: Bearer TOKEN`; a person's
/// token is refused with 403, an unknown one with 401.
pub(crate) struct ProxyCaller(pub String);

impl FromRequestParts<AppState> for ProxyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::MissingToken)?;
        if let Some(name) = state.proxies.identify(token) {
            return Ok(ProxyCaller(name.to_owned()));
        }
        state.workflow.authenticate(token).await?;
        Err(ApiError::NotAProxy)
    }
}

/// The token of a `Bearer` authorization header (scheme case-insensitive).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A JSON body; an empty body reads as `{}`.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge {
                    max_kib: MAX_BODY / 1024,
                }
            } else {
                ApiError::BadBody { detail: e.body_text() }
            }
        })?;
        let text: &[u8] = if bytes.trim_ascii().is_empty() { b"{}" } else { &bytes };
        // The path names the field at fault even when serde's own message does not (a wrong type).
        let mut de = serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(&mut de).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let detail = if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            };
            ApiError::BadBody { detail }
        })
    }
}

/// The `{id}` segment of the path.
pub(crate) struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| ApiError::BadPath { detail: e.body_text() })
    }
}

/// `?all=true` (also `1`, `yes`, or a bare `all`); absent means false.
pub(crate) struct All(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for All {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        parse_all(query.as_deref().unwrap_or_default()).map(All)
    }
}

fn parse_all(query: &str) -> Result<bool, ApiError> {
    let mut all = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != "all" {
            return Err(ApiError::BadQuery {
                detail: format!("unknown parameter \"{key}\"; the only one is all=true"),
            });
        }
        all = match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(ApiError::BadQuery {
                    detail: format!("all={value}: write all=true or all=false"),
                });
            }
        };
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_flag_spellings() {
        assert!(!parse_all("").expect("empty"));
        assert!(parse_all("all=true").expect("true"));
        assert!(parse_all("all").expect("bare"));
        assert!(!parse_all("all=false").expect("false"));
        assert!(parse_all("all=maybe").is_err());
        assert!(parse_all("limit=3").is_err());
    }
}
