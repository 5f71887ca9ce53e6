//! The HTTP API (axum): `/v1/*` data, `/health`, `/metrics`, `/admin/*`.
//!
//! Module map: [`kv`] (one key and ranges), [`txn`], [`admin`] (health, metrics, backup,
//! digest, mode admin calls), [`ui`] (the cluster page) over [`cluster_view`] (every node's
//! state, gathered by one node), [`error`] (one status and code per failure), [`guard`] (tokens,
//! declared body length, query encoding), [`server`] (the connection loop: cap, graceful
//! stop), [`timeouts`] (head, body and idle clocks) and [`write_budget`] (the bound on writes
//! in flight: 503 + `Retry-After` past it). Handlers validate input, then talk
//! only to the [`Replicator`] (writes, read fences, status) and the [`StateMachine`] (local
//! reads) — never to a mode's internals.

pub mod admin;
pub mod cluster_view;
pub mod error;
pub mod guard;
pub mod kv;
pub mod server;
pub mod timeouts;
pub mod txn;
pub mod ui;
pub mod write_budget;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use meridian_modes::replicator::AdminRequest;
use meridian_modes::{Replicator, StateMachine};
use meridian_wal::Wal;
use serde::Deserialize;

use crate::metrics::{method_label, HttpLabels, Metrics};
use error::ApiError;

pub struct AppState {
    pub replicator: Arc<dyn Replicator>,
    pub sm: Arc<dyn StateMachine>,
    pub wal: Wal,
    pub metrics: Arc<Metrics>,
    pub max_value_bytes: usize,
    pub api_token: Option<String>,
    /// May only read `/v1` (GET); see [`guard::require_api_token`].
    pub read_token: Option<String>,
    pub admin_token: Option<String>,
    /// What the cluster page and `meridian status` show beyond the mode's status.
    pub view: cluster_view::ViewConfig,
    /// Bytes of writes in flight, bounded (`MERIDIAN_WRITE_QUEUE_BYTES`).
    pub writes: write_budget::WriteBudget,
}

impl AppState {
    /// The WAL written now: a standalone node opens it again after a storage error.
    pub fn current_wal(&self) -> Wal {
        self.replicator.wal().unwrap_or_else(|| self.wal.clone())
    }

    /// A txn carries its values base64-encoded in JSON: room for one maximal value and change.
    pub fn txn_body_limit(&self) -> usize {
        self.max_value_bytes * 2 + (1 << 20)
    }
}

pub fn router(st: Arc<AppState>) -> Router {
    let kv_limit = st.max_value_bytes + 1;
    let txn = Router::new()
        .route("/v1/txn", post(txn::txn))
        .layer(DefaultBodyLimit::max(st.txn_body_limit()))
        .route_layer(middleware::from_fn_with_state(st.txn_body_limit(), guard::refuse_declared_length));
    let data = Router::new()
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/kv/", get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key))
        .route("/v1/kv", get(kv::list))
        .layer(DefaultBodyLimit::max(kv_limit))
        .route_layer(middleware::from_fn_with_state(st.max_value_bytes, guard::refuse_declared_length))
        .merge(txn)
        .route_layer(middleware::from_fn_with_state(st.clone(), guard::require_api_token));
    let admin = Router::new()
        .route("/admin/wal/position", get(admin::wal_position))
        .route("/admin/backup", get(admin::backup))
        .route("/admin/digest", get(admin::digest))
        .route("/admin/cluster/status", get(admin::cluster_status))
        .route("/admin/replication/lag", get(admin::replication_lag))
        .route("/admin/promote", post(admin::promote))
        .route("/admin/switchover", post(|s: State<Arc<AppState>>| simple(s, AdminRequest::Switchover)))
        .route("/admin/standby/release", post(|s: State<Arc<AppState>>| simple(s, AdminRequest::ReleaseStandby)))
        .route("/admin/raft/step-down", post(|s: State<Arc<AppState>>| simple(s, AdminRequest::StepDown)))
        .route("/admin/raft/state", get(|s: State<Arc<AppState>>| simple(s, AdminRequest::RaftState)))
        .route("/admin/raft/snapshot", post(|s: State<Arc<AppState>>| simple(s, AdminRequest::RaftSnapshot)))
        .route("/admin/region/promote", post(|s: State<Arc<AppState>>| simple(s, AdminRequest::RegionPromote)))
        .route("/admin/region/status", get(|s: State<Arc<AppState>>| simple(s, AdminRequest::RegionStatus)))
        .route("/admin/conflicts", get(|s: State<Arc<AppState>>| simple(s, AdminRequest::Conflicts)))
        .route("/admin/conflicts/{id}/resolve", post(resolve_conflict))
        .route("/admin/cluster/add", post(cluster_add))
        .route("/admin/cluster/remove", post(cluster_remove))
        .route("/admin/raft/transfer-leadership", post(transfer_leadership))
        .route_layer(middleware::from_fn_with_state(st.clone(), guard::require_admin_token));
    Router::new()
        .route("/health", get(admin::health))
        .route("/metrics", get(admin::metrics))
        .merge(ui::routes())
        .merge(data)
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn(guard::require_utf8_query))
        .layer(middleware::from_fn_with_state(st.clone(), record_latency))
        .with_state(st)
}

async fn simple(State(st): State<Arc<AppState>>, req: AdminRequest) -> Result<Response, ApiError> {
    admin::admin_call(&st, req).await
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    node_id: String,
    address: String,
    #[serde(default = "yes")]
    voter: bool,
}
fn yes() -> bool {
    true
}

async fn cluster_add(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let b: AddNode = json_body(&body)?;
    admin::admin_call(&st, AdminRequest::AddNode { node_id: b.node_id, address: b.address, voter: b.voter }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNode {
    node_id: String,
}

async fn cluster_remove(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let b: RemoveNode = json_body(&body)?;
    admin::admin_call(&st, AdminRequest::RemoveNode { node_id: b.node_id }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    target: String,
}

async fn transfer_leadership(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let b: Transfer = json_body(&body)?;
    admin::admin_call(&st, AdminRequest::TransferLeadership { target: b.target }).await
}

/// `POST /admin/conflicts/{id}/resolve` takes exactly one of these.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    value: Option<String>,
    value_b64: Option<String>,
    #[serde(default)]
    delete: bool,
    keep: Option<String>,
}

async fn resolve_conflict(State(st): State<Arc<AppState>>, axum::extract::Path(id): axum::extract::Path<String>, body: Bytes) -> Result<Response, ApiError> {
    use base64::Engine as _;
    use meridian_modes::replicator::Resolution;
    let b: Resolve = json_body(&body)?;
    let resolution = match (b.value, b.value_b64, b.delete, b.keep) {
        (Some(v), None, false, None) => Resolution::Value(v.into_bytes()),
        (None, Some(v), false, None) => {
            Resolution::Value(base64::engine::general_purpose::STANDARD.decode(v).map_err(|e| ApiError::bad_request(format!("value_b64 is not base64: {e}")))?)
        }
        (None, None, true, None) => Resolution::Delete,
        (None, None, false, Some(region)) => Resolution::Keep(region),
        _ => return Err(ApiError::bad_request("give exactly one of \"value\", \"value_b64\", \"delete\": true, or \"keep\": \"<region>\"")),
    };
    if let Resolution::Value(v) = &resolution {
        if v.len() > st.max_value_bytes {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("value is {} bytes; the limit is {} (MERIDIAN_MAX_VALUE_BYTES)", v.len(), st.max_value_bytes),
            ));
        }
    }
    admin::admin_call(&st, AdminRequest::ResolveConflict { id, resolution }).await
}

async fn record_latency(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method()).to_owned();
    // The route template, not the raw path, so keys do not explode the label set.
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let resp = next.run(req).await;
    st.metrics
        .http_latency
        .get_or_create(&HttpLabels { method, route, status: resp.status().as_u16() })
        .observe(start.elapsed().as_secs_f64());
    resp
}
