//! Request bodies over [`crate::server::BODY_LIMIT`] are refused with 413: at once when
//! `Content-Length` says so, else (chunked bodies) once more than that has been read.
//! (poem's `SizeLimit` also refuses requests without `Content-Length`, GETs included.)

use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use tokio::io::AsyncReadExt as _;

fn too_large(limit: usize) -> poem::Error {
    poem::Error::from_string(
        format!("the request body is larger than {limit} bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// Refuses bodies larger than `limit` bytes.
pub async fn body_limit<E: Endpoint>(
    next: E,
    mut req: Request,
    limit: usize,
) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => return Err(too_large(limit)),
        Some(_) => {}
        None => {
            let mut buf = Vec::new();
            let read = req
                .take_body()
                .into_async_read()
                .take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST))?;
            if read > limit {
                return Err(too_large(limit));
            }
            req.set_body(Body::from(buf));
        }
    }
    next.call(req).await.map(IntoResponse::into_response)
}
