//! The live cluster page, served from the binary (`FROM scratch` images have no network and
//! no files beside it): `GET /ui` renders the node table on the server; `ui/app.js` then
//! polls `GET /ui/cluster.json` every second, redraws it and charts each node's lag.
//! `GET /ui/node.json` is one node's own view, what the serving node fetches from its peers.
//!
//! The page and its JSON need no token (they show what `/health` and `/metrics` publish);
//! its promote and switchover buttons call `/admin/*` with the admin token the operator types.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::cluster_view::{cluster_view, local_view, ClusterView, NodeView};
use super::AppState;

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/ui/cluster.json", get(|State(st): State<Arc<AppState>>| async move { Json(cluster_view(&st).await) }))
        .route("/ui/node.json", get(|State(st): State<Arc<AppState>>| async move { Json(local_view(&st).await) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn page(State(st): State<Arc<AppState>>) -> Html<String> {
    Html(render(&cluster_view(&st).await))
}

/// The page with the table as the server sees it now (the script takes over from there).
pub fn render(view: &ClusterView) -> String {
    let rows: String = view.nodes.iter().map(|n| row(n, &view.served_by)).collect();
    let tails: String = view
        .nodes
        .iter()
        .flat_map(|n| n.divergent_tails.iter().map(move |t| (n, t)))
        .map(|(n, t)| format!("<li>{}: {} record(s) after index {} in <code>{}</code></li>", esc(&n.node_id), t.records, t.after_index, esc(&t.file)))
        .collect();
    INDEX
        .replace("{{served_by}}", &esc(&view.served_by))
        .replace("{{mode}}", &esc(&view.mode))
        .replace("{{rows}}", &rows)
        .replace("{{divergent}}", if tails.is_empty() { "<li>none</li>" } else { &tails })
}

/// One table row, the columns of `ui/index.html` (buttons are the script's: they need it).
fn row(n: &NodeView, served_by: &str) -> String {
    let dash = || "—".to_owned();
    let role = match &n.membership {
        Some(m) => format!("{} ({m})", n.role),
        None => n.role.clone(),
    };
    let health = if n.reachable { n.health.as_str() } else { "down" };
    let sync = match (&n.sync_mode, n.in_sync) {
        (Some(m), Some(true)) => format!("{} <span class=\"ok\">in sync</span>", esc(m)),
        (Some(m), Some(false)) => format!("{} <span class=\"bad\">out of sync</span>", esc(m)),
        (Some(m), None) => esc(m),
        (None, _) => dash(),
    };
    let peers: Vec<String> = n
        .peers
        .iter()
        .filter(|p| p.id != meridian_modes::ha::WITNESS)
        .map(|p| format!("{} <span class=\"{}\">{}</span>", esc(&p.id), if p.healthy { "ok" } else { "bad" }, if p.healthy { "up" } else { "down" }))
        .collect();
    let witness = match n.witness_healthy {
        Some(true) => "<span class=\"ok\">reachable</span>".to_owned(),
        Some(false) => "<span class=\"bad\">unreachable</span>".to_owned(),
        None => dash(),
    };
    let lag = if n.reachable {
        format!("{:.1} s{}", n.lag_seconds, n.lag_records.map(|r| format!(" / {r} rec")).unwrap_or_default())
    } else {
        dash()
    };
    let notes = if n.reachable { n.notes.iter().map(|s| esc(s)).collect::<Vec<_>>().join("<br>") } else { esc(n.error.as_deref().unwrap_or("")) };
    let num = |v: String| if n.reachable { v } else { dash() };
    format!(
        "<tr data-node=\"{id}\" data-role=\"{role_attr}\" class=\"{cls}\"><td class=\"node\">{id}{this}<div class=\"url\">{url}</div></td>\
         <td class=\"role role-{role_attr}\">{role}</td><td class=\"health h-{health}\">{health}</td><td class=\"num\">{epoch}</td>\
         <td class=\"num\">{wal}</td><td class=\"num\">{applied}</td><td class=\"num\">{lag}</td><td>{sync}</td><td>{peers}</td>\
         <td>{witness}</td><td class=\"notes\">{notes}</td><td class=\"actions\"></td></tr>",
        id = esc(&n.node_id),
        this = if n.node_id == served_by { " (this page)" } else { "" },
        url = esc(n.url.as_deref().unwrap_or("")),
        role_attr = esc(&n.role),
        cls = if n.reachable { "" } else { "down" },
        role = esc(&role),
        health = esc(health),
        epoch = num(esc(&n.epoch_label)),
        wal = num(format!("{} / {}", n.wal_last_index, n.wal_durable_index)),
        applied = num(n.applied_index.to_string()),
        peers = if peers.is_empty() { dash() } else { peers.join("<br>") },
    )
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_renders_every_node_escaped() {
        let view = ClusterView {
            served_by: "a".into(),
            mode: "ha_standby".into(),
            nodes: vec![
                NodeView { node_id: "a".into(), role: "primary".into(), reachable: true, health: "healthy".into(), epoch: 7, ..Default::default() },
                NodeView { node_id: "<b>".into(), role: "unknown".into(), reachable: false, error: Some("cannot reach".into()), ..Default::default() },
            ],
            ..Default::default()
        };
        let html = render(&view);
        assert!(html.contains("data-node=\"a\" data-role=\"primary\""), "{html}");
        assert!(html.contains("data-node=\"&lt;b&gt;\"") && !html.contains("<b>\""), "{html}");
        assert!(html.contains("cannot reach") && html.contains("class=\"down\""));
        assert!(!html.contains("{{"), "a placeholder was left in the page");
    }
}
