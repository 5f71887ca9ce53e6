//! Health, metrics and `/admin/*`: what an operator and a load balancer ask of a node.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_modes::replicator::{AdminRequest, Health, ReplicationStatus};
use meridian_modes::state_machine::{digest as state_digest, write_snapshot};
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::{ReaderStream, SyncIoBridge};

use super::error::ApiError;
use super::AppState;

/// The mode's status with the state machine's damage, if any, as a degrading note: what
/// `/health` and the cluster page report.
pub fn node_status(st: &AppState) -> ReplicationStatus {
    let mut s = st.replicator.status();
    if let Some(damage) = st.sm.damage() {
        s.notes.push(damage);
        if s.health == Health::Healthy {
            s.health = Health::Degraded;
        }
    }
    s
}

pub fn health_word(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unhealthy => "unhealthy",
    }
}

pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = node_status(&st);
    let status = health_word(s.health);
    let code = if s.health == Health::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(json!({"status": status, "replication": s}))).into_response()
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the classic text
/// format, which `promtool check metrics`, curl and older scrapers read.
pub async fn metrics(State(st): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], st.metrics.encode()).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::to_prometheus_text(&st.metrics.encode())).into_response()
    }
}

pub async fn wal_position(State(st): State<Arc<AppState>>) -> Response {
    let p = st.current_wal().position();
    Json(json!({
        "first_index": p.first_index,
        "last_index": p.last_index,
        "durable_index": p.durable_index,
        "segments": p.segments,
        "total_bytes": p.total_bytes,
        "current_segment": p.current_segment,
        "current_offset": p.current_offset,
        "applied_index": st.sm.applied_index(),
        "checkpoint_index": st.sm.durable_index(),
    }))
    .into_response()
}

/// Streams a consistent snapshot taken from one read transaction while writes go on. The
/// stream ends with a checksum, so a cut download is detected by `meridian restore`.
pub async fn backup(State(st): State<Arc<AppState>>) -> Response {
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    let sm = st.sm.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(256 * 1024, SyncIoBridge::new(writer));
        if let Err(e) = write_snapshot(&*sm, out) {
            tracing::warn!("backup stream stopped: {e}");
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"meridian.backup\""),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response()
}

pub async fn digest(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let sm = st.sm.clone();
    let d = tokio::task::spawn_blocking(move || state_digest(&*sm))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(d).into_response())
}

pub async fn cluster_status(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    match st.replicator.admin(AdminRequest::ClusterStatus).await {
        Ok(v) => Ok(Json(v).into_response()),
        // Every mode can at least report its own status.
        Err(meridian_modes::replicator::AdminError::NotSupported { .. }) => Ok(Json(json!(st.replicator.status())).into_response()),
        Err(e) => Err(e.into()),
    }
}

pub async fn replication_lag(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    match st.replicator.admin(AdminRequest::ReplicationLag).await {
        Ok(v) => Ok(Json(v).into_response()),
        Err(meridian_modes::replicator::AdminError::NotSupported { .. }) => {
            let s = st.replicator.status();
            Ok(Json(json!({"mode": s.mode, "lag_seconds": s.lag_seconds, "peers": []})).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct PromoteParams {
    #[serde(default)]
    force: bool,
}

pub async fn promote(State(st): State<Arc<AppState>>, Query(p): Query<PromoteParams>) -> Result<Response, ApiError> {
    admin_call(&st, AdminRequest::Promote { force: p.force }).await
}

/// Admin operations that are the mode's business; unsupported ones answer 400 naming the mode.
pub async fn admin_call(st: &AppState, req: AdminRequest) -> Result<Response, ApiError> {
    Ok(Json(st.replicator.admin(req).await?).into_response())
}
