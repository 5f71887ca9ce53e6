//! `/v1/kv`: put, get, delete one key; list a range.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use meridian_modes::command::{Command, Outcome};
use meridian_modes::replicator::{Consistency, ReadRequest};
use meridian_modes::Bookmark;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::timeouts::BodyTimeout;
use super::AppState;

pub const MAX_KEY_BYTES: usize = 1024;
const DEFAULT_WAIT: Duration = Duration::from_millis(5000);
const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!("keys must be 1 to {MAX_KEY_BYTES} bytes of UTF-8; this one is {} bytes", key.len())));
    }
    if meridian_modes::command::is_reserved(key) {
        // The store's own keys (multi_region marks and primary record) start with NUL.
        return Err(ApiError::bad_request("keys may not start with a NUL character (reserved for the store's own keys)"));
    }
    Ok(())
}

pub fn key_from(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::bad_request(format!("bad key in path: {e}")))?;
    check_key(&key)?;
    Ok(key)
}

pub fn body_from(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, ApiError> {
    let body = body.map_err(|e| {
        if let Some(t) = BodyTimeout::in_chain(&e) {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", t.to_string())
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body is larger than {max} bytes"))
        } else {
            ApiError::bad_request(format!("cannot read request body: {e}"))
        }
    })?;
    Ok(body)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

#[derive(Deserialize)]
pub struct WriteParams {
    if_revision: Option<u64>,
}

#[derive(Deserialize)]
pub struct ReadParams {
    consistency: Option<String>,
    bookmark: Option<String>,
    wait_ms: Option<u64>,
}

impl ReadParams {
    pub fn to_request(&self) -> Result<ReadRequest, ApiError> {
        let consistency = match self.consistency.as_deref() {
            None => None,
            Some("linearizable") => Some(Consistency::Linearizable),
            Some("local") => Some(Consistency::Local),
            Some(other) => return Err(ApiError::bad_request(format!("consistency must be linearizable or local, not {other:?}"))),
        };
        let bookmark = match &self.bookmark {
            None => None,
            Some(b) => Some(b.parse::<Bookmark>().map_err(|e| ApiError::bad_request(e.to_string()))?),
        };
        let wait = self.wait_ms.map_or(DEFAULT_WAIT, |ms| Duration::from_millis(ms).min(MAX_WAIT));
        Ok(ReadRequest { consistency, bookmark, wait })
    }
}

fn write_answer(revision: u64, bookmark: Bookmark, extra: Option<(&str, serde_json::Value)>) -> Response {
    let mut body = json!({"revision": revision, "bookmark": bookmark.to_string()});
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    Json(body).into_response()
}

pub async fn put(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let params = query(params)?;
    let value = body_from(body, st.max_value_bytes)?;
    if value.len() > st.max_value_bytes {
        return Err(ApiError::too_large(format!("value is {} bytes; the limit is {} (MERIDIAN_MAX_VALUE_BYTES)", value.len(), st.max_value_bytes)));
    }
    let _in_flight = st.writes.admit(key.len() + value.len())?;
    let committed = st.replicator.submit(Command::Put { key, value: value.to_vec(), if_revision: params.if_revision }).await?;
    match committed.result.outcome {
        Outcome::PreconditionFailed { current_revision } => Err(ApiError::precondition_failed(current_revision)),
        _ => Ok(write_answer(committed.result.revision, committed.bookmark, None)),
    }
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let params = query(params)?;
    let _in_flight = st.writes.admit(key.len())?;
    let committed = st.replicator.submit(Command::Delete { key, if_revision: params.if_revision }).await?;
    match committed.result.outcome {
        Outcome::PreconditionFailed { current_revision } => Err(ApiError::precondition_failed(current_revision)),
        Outcome::Deleted { existed } => Ok(write_answer(committed.result.revision, committed.bookmark, Some(("deleted", json!(existed))))),
        other => Err(ApiError::internal(format!("unexpected outcome for a delete: {other:?}"))),
    }
}

/// The bookmark covering everything this node has applied, for read answers.
pub fn read_bookmark(st: &AppState) -> Bookmark {
    let s = st.replicator.status();
    Bookmark { epoch: s.epoch, index: s.applied_index }
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let req = query(params)?.to_request()?;
    st.replicator.read_fence(&req).await?;
    let bookmark = read_bookmark(&st);
    let kv = st.sm.get(&key)?.ok_or_else(|| ApiError::not_found(format!("key {key:?} does not exist")))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert("x-revision", HeaderValue::from(kv.mod_revision));
    if let Some(stamp) = &kv.stamp {
        // multi_region: which version this is under last-write-wins, `hlc@region`.
        if let Ok(v) = HeaderValue::from_str(&format!("{}@{}", stamp.hlc, stamp.region)) {
            headers.insert("x-stamp", v);
        }
        // CLUSTER_CONFLICT_STRATEGY=manual: the key is flagged while a conflict on it is open.
        if st.sm.get_version(&meridian_modes::conflicts::record_key(&key))?.is_some() {
            if let Ok(v) = HeaderValue::from_str(&meridian_modes::conflicts::id_of(&key)) {
                headers.insert("x-conflict", v);
            }
        }
    }
    headers.insert("x-create-revision", HeaderValue::from(kv.create_revision));
    headers.insert("x-bookmark", HeaderValue::from_str(&bookmark.to_string()).expect("bookmark is ASCII"));
    Ok((headers, kv.value).into_response())
}

#[derive(Deserialize)]
pub struct ListParams {
    #[serde(default)]
    prefix: String,
    start_after: Option<String>,
    limit: Option<usize>,
    #[serde(flatten)]
    read: ReadParams,
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(params)?;
    let req = p.read.to_request()?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    st.replicator.read_fence(&req).await?;
    let bookmark = read_bookmark(&st);
    let mut items = st.sm.list(&p.prefix, p.start_after.as_deref(), limit + 1)?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|kv| kv.key.clone())
    } else {
        None
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let items: Vec<_> = items
        .into_iter()
        .map(|kv| {
            let mut item = json!({"key": kv.key, "value_b64": b64.encode(&kv.value), "revision": kv.mod_revision, "create_revision": kv.create_revision});
            if let Some(st) = &kv.stamp {
                item["stamp"] = json!({"hlc": st.hlc, "region": st.region});
            }
            item
        })
        .collect();
    Ok(Json(json!({"items": items, "next": next, "bookmark": bookmark.to_string()})).into_response())
}

pub async fn empty_key() -> ApiError {
    ApiError::bad_request(format!("keys must be 1 to {MAX_KEY_BYTES} bytes of UTF-8; this one is empty"))
}
