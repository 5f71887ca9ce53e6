//! Checks every request passes before a handler runs: bearer tokens, a declared body length
//! over the route's limit, and a query string that is not UTF-8.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;

/// Whether the request carries `Authorization: Bearer <token>`. Both sides are hashed first,
/// so the comparison runs over 32 bytes whatever the lengths and wherever they differ: the
/// time taken tells nothing about the token's length or prefix.
pub fn token_matches(req: &Request, token: &str) -> bool {
    let got = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let got = got.strip_prefix(b"Bearer ").unwrap_or_default();
    constant_time_eq(&Sha256::digest(got).into(), &Sha256::digest(token.as_bytes()).into())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `/v1/*`: the API token may do anything; the read token (`MERIDIAN_READ_TOKEN`) only GET
/// (and HEAD) — a write with it is 403, so a client learns it holds the wrong kind of token.
/// Config refuses a read token without an API token: `/v1` would be open anyway.
pub async fn require_api_token(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(api) = &st.api_token else { return next.run(req).await };
    if token_matches(&req, api) {
        return next.run(req).await;
    }
    match &st.read_token {
        Some(read) if token_matches(&req, read) => {
            if matches!(*req.method(), Method::GET | Method::HEAD) {
                next.run(req).await
            } else {
                ApiError::forbidden("this token may only read (MERIDIAN_READ_TOKEN allows GET on /v1); writes need MERIDIAN_API_TOKEN").into_response()
            }
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

pub async fn require_admin_token(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match &st.admin_token {
        Some(t) if !token_matches(&req, t) => ApiError::unauthorized().into_response(),
        _ => next.run(req).await,
    }
}

/// Refuses a body declared larger than `limit` (413) before reading a byte of it. The body
/// limit of the extractors catches undeclared (chunked) bodies as they arrive.
pub async fn refuse_declared_length(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => {
            ApiError::too_large(format!("the request declares a {len}-byte body; the limit here is {limit} (MERIDIAN_MAX_VALUE_BYTES)")).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Refuses (400) a query string whose names or values are not UTF-8 once percent-decoded.
/// The query extractor would silently replace such bytes, so `start_after=%ff` would page
/// from a key nobody asked for.
pub async fn require_utf8_query(req: Request, next: Next) -> Response {
    if let Some(q) = req.uri().query() {
        if let Some(bad) = q.split('&').find(|pair| std::str::from_utf8(&percent_decode(pair)).is_err()) {
            return ApiError::bad_request(format!("query parameter {bad:?} is not UTF-8 once percent-decoded")).into_response();
        }
    }
    next.run(req).await
}

/// Form decoding (`+` is a space, `%XX` a byte); a `%` without two hex digits stays as it is,
/// as the query extractor treats it.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri("/v1/kv/a");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches(&req(Some("Bearer s3cret")), "s3cret"));
        for wrong in [None, Some("Bearer "), Some("Bearer s3cre"), Some("Bearer s3cret!"), Some("Bearer S3cret"), Some("s3cret"), Some("Basic s3cret")] {
            assert!(!token_matches(&req(wrong), "s3cret"), "{wrong:?}");
        }
        // Not valid UTF-8 in the header: refused, not a panic.
        let mut r = req(None);
        r.headers_mut().insert(header::AUTHORIZATION, axum::http::HeaderValue::from_bytes(b"Bearer \xff").unwrap());
        assert!(!token_matches(&r, "s3cret"));
    }

    #[test]
    fn percent_decoding_follows_the_form_rules() {
        assert_eq!(percent_decode("a+b%20c"), b"a b c");
        assert_eq!(percent_decode("%C3%A9"), "é".as_bytes());
        assert_eq!(percent_decode("%ff"), [0xff]);
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }
}
