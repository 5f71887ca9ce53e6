//! `POST /v1/txn`: compare on revision, value or existence, then run the success or failure
//! ops — all-or-nothing, because the whole txn is one command applied in one transaction.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use meridian_modes::command::{Command, Compare, CompareTarget, Op, OpResult, Outcome, Txn};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::kv::{body_from, check_key};
use super::AppState;

/// Most ops in one branch and compares in one txn; a txn is one log entry, so it is bounded.
pub const MAX_OPS: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnRequest {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<OpJson>,
    #[serde(default)]
    failure: Vec<OpJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: String,
    revision: Option<u64>,
    value_b64: Option<String>,
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum OpJson {
    Put { key: String, value_b64: String },
    Delete { key: String },
    Get { key: String },
}

fn decode_value(b64: &str, max: usize) -> Result<Vec<u8>, ApiError> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ApiError::bad_request(format!("value_b64 is not valid base64: {e}")))?;
    if v.len() > max {
        return Err(ApiError::too_large(format!("a value is {} bytes; the limit is {max} (MERIDIAN_MAX_VALUE_BYTES)", v.len())));
    }
    Ok(v)
}

fn to_txn(req: TxnRequest, max_value: usize) -> Result<Txn, ApiError> {
    if req.compare.len() > MAX_OPS || req.success.len() > MAX_OPS || req.failure.len() > MAX_OPS {
        return Err(ApiError::bad_request(format!("at most {MAX_OPS} compares and {MAX_OPS} ops per branch")));
    }
    let mut compare = Vec::with_capacity(req.compare.len());
    for c in req.compare {
        check_key(&c.key)?;
        let target = match (c.revision, c.value_b64, c.exists) {
            (Some(r), None, None) => CompareTarget::Revision(r),
            (None, Some(v), None) => CompareTarget::Value(decode_value(&v, max_value)?),
            (None, None, Some(e)) => CompareTarget::Exists(e),
            _ => return Err(ApiError::bad_request(format!("compare on {:?} needs exactly one of revision, value_b64, exists", c.key))),
        };
        compare.push(Compare { key: c.key, target });
    }
    let ops = |list: Vec<OpJson>| -> Result<Vec<Op>, ApiError> {
        list.into_iter()
            .map(|o| {
                Ok(match o {
                    OpJson::Put { key, value_b64 } => {
                        check_key(&key)?;
                        Op::Put { key, value: decode_value(&value_b64, max_value)? }
                    }
                    OpJson::Delete { key } => {
                        check_key(&key)?;
                        Op::Delete { key }
                    }
                    OpJson::Get { key } => {
                        check_key(&key)?;
                        Op::Get { key }
                    }
                })
            })
            .collect()
    };
    Ok(Txn { compare, success: ops(req.success)?, failure: ops(req.failure)? })
}

fn result_json(r: OpResult) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    match r {
        OpResult::Put { key } => json!({"op": "put", "key": key}),
        OpResult::Delete { key, deleted } => json!({"op": "delete", "key": key, "deleted": deleted}),
        OpResult::Get { key, kv: Some(kv) } => json!({
            "op": "get", "key": key, "found": true, "value_b64": b64.encode(&kv.value),
            "revision": kv.mod_revision, "create_revision": kv.create_revision
        }),
        OpResult::Get { key, kv: None } => json!({"op": "get", "key": key, "found": false}),
    }
}

pub async fn txn(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body_from(body, st.txn_body_limit())?;
    if body.is_empty() {
        return Err(ApiError::bad_request("missing body: expected a JSON object {\"compare\":[...],\"success\":[...],\"failure\":[...]}"));
    }
    let req: TxnRequest = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))?;
    let txn = to_txn(req, st.max_value_bytes)?;
    let _in_flight = st.writes.admit(body.len())?;
    let committed = st.replicator.submit(Command::Txn(txn)).await?;
    let Outcome::Txn { succeeded, results } = committed.result.outcome else {
        return Err(ApiError::internal("unexpected outcome for a txn"));
    };
    Ok(Json(json!({
        "succeeded": succeeded,
        "revision": committed.result.revision,
        "bookmark": committed.bookmark.to_string(),
        "results": results.into_iter().map(result_json).collect::<Vec<_>>(),
    }))
    .into_response())
}
