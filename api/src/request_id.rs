//! `X-Request-Id`: the client's value is echoed (when it is short printable ASCII), else a
//! random one is generated; it is in the request's extensions for logs and on every
//! response.

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument as _;

/// The header.
pub const HEADER: &str = "x-request-id";

/// This request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn acceptable(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Sets the request id and adds it to the response.
pub async fn request_id_middleware<E: Endpoint>(
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(|| hex::encode(rand::random::<[u8; 12]>()), str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = match next.call(req).instrument(span).await {
        Ok(resp) => resp.into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, value);
    }
    Ok(resp)
}
