//! Contract tests for every data and admin endpoint of a standalone node, including each
//! error code: bad JSON, missing body, oversized value, over-long key, bad bookmark, wrong token.

mod common;

use base64::Engine;
use common::Node;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const MAX_VALUE: usize = 1024;

fn start(extra: &[(&str, &str)]) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![("MERIDIAN_MAX_VALUE_BYTES", "1024")];
    env.extend_from_slice(extra);
    let node = Node::start(&dir.path().join("data"), &env);
    (dir, node)
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    (status, body["error"]["code"].as_str().expect("error.code").to_owned())
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

#[tokio::test]
async fn put_get_delete_follow_the_contract() {
    let (_d, node) = start(&[]);
    let c = Client::new();

    let r = c.put(node.url("/v1/kv/users/alice")).body("hello").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let put: Value = r.json().await.unwrap();
    let rev = put["revision"].as_u64().unwrap();
    assert!(put["bookmark"].as_str().unwrap().starts_with("mb1."));

    let r = c.get(node.url("/v1/kv/users/alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-revision"].to_str().unwrap(), rev.to_string());
    assert!(r.headers().contains_key("x-bookmark"));
    assert_eq!(r.bytes().await.unwrap(), "hello");

    // Revisions strictly increase; create revision stays.
    let put2: Value = c.put(node.url("/v1/kv/users/alice")).body("v2").send().await.unwrap().json().await.unwrap();
    let rev2 = put2["revision"].as_u64().unwrap();
    assert!(rev2 > rev);
    let r = c.get(node.url("/v1/kv/users/alice")).send().await.unwrap();
    assert_eq!(r.headers()["x-create-revision"].to_str().unwrap(), rev.to_string());

    // Binary values survive untouched; percent-encoded keys decode.
    let bin: Vec<u8> = (0..=255).collect();
    assert_eq!(c.put(node.url("/v1/kv/bin%20key")).body(bin.clone()).send().await.unwrap().status(), 200);
    assert_eq!(c.get(node.url("/v1/kv/bin%20key")).send().await.unwrap().bytes().await.unwrap(), bin);

    // if_revision: 0 = must not exist; a stale revision is 412.
    let r = c.put(node.url("/v1/kv/users/alice?if_revision=0")).body("x").send().await.unwrap();
    assert_eq!(error_code(r).await, (StatusCode::PRECONDITION_FAILED, "precondition_failed".into()));
    let r = c.put(node.url(&format!("/v1/kv/users/alice?if_revision={rev}"))).body("x").send().await.unwrap();
    assert_eq!(error_code(r).await, (StatusCode::PRECONDITION_FAILED, "precondition_failed".into()));
    let r = c.put(node.url(&format!("/v1/kv/users/alice?if_revision={rev2}"))).body("v3").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.put(node.url("/v1/kv/fresh?if_revision=0")).body("x").send().await.unwrap().status(), 200);

    // Delete.
    let r = c.delete(node.url("/v1/kv/users/alice?if_revision=1")).send().await.unwrap();
    assert_eq!(error_code(r).await.1, "precondition_failed");
    let del: Value = c.delete(node.url("/v1/kv/users/alice")).send().await.unwrap().json().await.unwrap();
    assert_eq!(del["deleted"], true);
    assert!(del["revision"].as_u64().unwrap() > rev2);
    let del: Value = c.delete(node.url("/v1/kv/users/alice")).send().await.unwrap().json().await.unwrap();
    assert_eq!(del["deleted"], false);
    let r = c.get(node.url("/v1/kv/users/alice")).send().await.unwrap();
    assert_eq!(error_code(r).await, (StatusCode::NOT_FOUND, "not_found".into()));
}

#[tokio::test]
async fn list_pages_through_a_prefix() {
    let (_d, node) = start(&[]);
    let c = Client::new();
    for k in ["a/1", "a/2", "a/3", "a/4", "b/1"] {
        c.put(node.url(&format!("/v1/kv/{k}"))).body(k.to_string()).send().await.unwrap();
    }
    let page: Value = c.get(node.url("/v1/kv?prefix=a/&limit=3")).send().await.unwrap().json().await.unwrap();
    let keys: Vec<_> = page["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys, ["a/1", "a/2", "a/3"]);
    assert_eq!(page["next"], "a/3");
    assert_eq!(page["items"][0]["value_b64"], b64(b"a/1"));
    assert!(page["items"][0]["revision"].as_u64().unwrap() > 0);
    let page: Value = c.get(node.url("/v1/kv?prefix=a/&start_after=a/3&limit=3")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], Value::Null);
    let r = c.get(node.url("/v1/kv?limit=0")).send().await.unwrap();
    assert_eq!(error_code(r).await.1, "bad_request");
    let r = c.get(node.url("/v1/kv?limit=abc")).send().await.unwrap();
    assert_eq!(error_code(r).await.1, "bad_request");
}

#[tokio::test]
async fn txn_is_all_or_nothing() {
    let (_d, node) = start(&[]);
    let c = Client::new();
    let rev = c.put(node.url("/v1/kv/acct/a")).body("100").send().await.unwrap().json::<Value>().await.unwrap()["revision"].as_u64().unwrap();

    let txn = |compare: Value| {
        json!({
            "compare": compare,
            "success": [{"op":"put","key":"acct/a","value_b64": b64(b"90")}, {"op":"put","key":"acct/b","value_b64": b64(b"10")}, {"op":"get","key":"acct/a"}],
            "failure": [{"op":"get","key":"acct/a"}]
        })
    };
    // Failing compare: nothing from success is applied, failure ops run.
    let r: Value = c.post(node.url("/v1/txn")).json(&txn(json!([{"key":"acct/a","revision": rev + 100}]))).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["succeeded"], false);
    assert_eq!(r["results"][0]["value_b64"], b64(b"100"));
    assert_eq!(c.get(node.url("/v1/kv/acct/b")).send().await.unwrap().status(), 404);

    for cmp in [json!([{"key":"acct/a","value_b64": b64(b"nope")}]), json!([{"key":"acct/b","exists": true}])] {
        let r: Value = c.post(node.url("/v1/txn")).json(&txn(cmp)).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["succeeded"], false);
    }
    // Passing compares (revision, value, existence together): every op applies in one revision.
    let cmp = json!([{"key":"acct/a","revision": rev}, {"key":"acct/a","value_b64": b64(b"100")}, {"key":"acct/b","exists": false}]);
    let r: Value = c.post(node.url("/v1/txn")).json(&txn(cmp)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["succeeded"], true, "{r}");
    let trev = r["revision"].as_u64().unwrap();
    assert!(r["bookmark"].is_string());
    assert_eq!(r["results"][2]["value_b64"], b64(b"90"));
    for k in ["acct/a", "acct/b"] {
        let g = c.get(node.url(&format!("/v1/kv/{k}"))).send().await.unwrap();
        assert_eq!(g.headers()["x-revision"].to_str().unwrap(), trev.to_string());
    }
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let (_d, node) = start(&[]);
    let c = Client::new();
    let bad = |r: reqwest::Response| error_code(r);

    assert_eq!(bad(c.post(node.url("/v1/txn")).body("{not json").send().await.unwrap()).await, (StatusCode::BAD_REQUEST, "bad_request".into()));
    assert_eq!(bad(c.post(node.url("/v1/txn")).send().await.unwrap()).await.1, "bad_request");
    let unknown_op = json!({"success":[{"op":"explode","key":"k"}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&unknown_op).send().await.unwrap()).await.1, "bad_request");
    let two_targets = json!({"compare":[{"key":"k","revision":1,"exists":true}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&two_targets).send().await.unwrap()).await.1, "bad_request");
    let bad_b64 = json!({"success":[{"op":"put","key":"k","value_b64":"@@@"}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&bad_b64).send().await.unwrap()).await.1, "bad_request");

    // Oversized values: 413 on PUT and inside a txn; exactly the limit is fine.
    assert_eq!(bad(c.put(node.url("/v1/kv/big")).body(vec![7u8; MAX_VALUE + 1]).send().await.unwrap()).await, (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into()));
    assert_eq!(bad(c.put(node.url("/v1/kv/big")).body(vec![7u8; 10 * MAX_VALUE]).send().await.unwrap()).await.1, "too_large");
    assert_eq!(c.put(node.url("/v1/kv/big")).body(vec![7u8; MAX_VALUE]).send().await.unwrap().status(), 200);
    let big_txn = json!({"success":[{"op":"put","key":"big2","value_b64": b64(&vec![1u8; MAX_VALUE + 1])}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&big_txn).send().await.unwrap()).await.1, "too_large");

    // Keys: 1..=1024 bytes.
    let long = "k".repeat(1025);
    assert_eq!(bad(c.put(node.url(&format!("/v1/kv/{long}"))).body("x").send().await.unwrap()).await, (StatusCode::BAD_REQUEST, "bad_request".into()));
    assert_eq!(c.put(node.url(&format!("/v1/kv/{}", "k".repeat(1024)))).body("x").send().await.unwrap().status(), 200);
    assert_eq!(bad(c.put(node.url("/v1/kv/")).body("x").send().await.unwrap()).await.1, "bad_request");
    let long_txn = json!({"success":[{"op":"delete","key": long}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&long_txn).send().await.unwrap()).await.1, "bad_request");
    assert_eq!(bad(c.put(node.url("/v1/kv/k?if_revision=minus")).body("x").send().await.unwrap()).await.1, "bad_request");
    // A key may not start with NUL: those are the store's own (multi_region high-water marks,
    // the primary record), never a client's to write or delete.
    assert_eq!(bad(c.put(node.url("/v1/kv/%00region%2Fprimary")).body("x").send().await.unwrap()).await.1, "bad_request");
    assert_eq!(bad(c.delete(node.url("/v1/kv/%00hwm%2Fus")).send().await.unwrap()).await.1, "bad_request");
    let reserved_txn = json!({"success":[{"op":"put","key":"\u{0}hwm/us","value_b64":"eA=="}]});
    assert_eq!(bad(c.post(node.url("/v1/txn")).json(&reserved_txn).send().await.unwrap()).await.1, "bad_request");

    // Reads: bad consistency or bookmark.
    assert_eq!(bad(c.get(node.url("/v1/kv/k?consistency=eventual")).send().await.unwrap()).await.1, "bad_request");
    assert_eq!(bad(c.get(node.url("/v1/kv/k?bookmark=garbage")).send().await.unwrap()).await.1, "bad_request");

    // Unknown endpoints and methods answer in JSON too.
    assert_eq!(bad(c.get(node.url("/v2/nothing")).send().await.unwrap()).await, (StatusCode::NOT_FOUND, "not_found".into()));
    assert_eq!(bad(c.patch(node.url("/v1/kv/k")).send().await.unwrap()).await.0, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing above wrote anything except the two valid puts.
    let page: Value = c.get(node.url("/v1/kv")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
}

#[tokio::test]
async fn bookmarks_wait_for_their_position() {
    let (_d, node) = start(&[]);
    let c = Client::new();
    let put: Value = c.put(node.url("/v1/kv/b")).body("1").send().await.unwrap().json().await.unwrap();
    let bm = put["bookmark"].as_str().unwrap();
    let r = c.get(node.url(&format!("/v1/kv/b?bookmark={bm}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A bookmark from the future: the node waits wait_ms, then answers 504 timeout.
    let future = "mb1.0.ffffff";
    let t = std::time::Instant::now();
    let r = c.get(node.url(&format!("/v1/kv/b?bookmark={future}&wait_ms=300"))).send().await.unwrap();
    assert_eq!(error_code(r).await, (StatusCode::GATEWAY_TIMEOUT, "timeout".into()));
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    // A read that waits for a write that arrives while it waits.
    let next = format!("mb1.0.{:x}", put["revision"].as_u64().unwrap() + 1);
    let url = node.url(&format!("/v1/kv/b?bookmark={next}&wait_ms=5000"));
    let waiter = tokio::spawn(async move { Client::new().get(url).send().await.unwrap().status() });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    c.put(node.url("/v1/kv/b")).body("2").send().await.unwrap();
    assert_eq!(waiter.await.unwrap(), 200);
}

#[tokio::test]
async fn tokens_guard_data_and_admin_routes() {
    let (_d, node) = start(&[("MERIDIAN_API_TOKEN", "123456"), ("MERIDIAN_ADMIN_TOKEN", "adm-secret")]);
    let c = Client::new();
    assert_eq!(error_code(c.get(node.url("/v1/kv/x")).send().await.unwrap()).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    assert_eq!(error_code(c.put(node.url("/v1/kv/x")).bearer_auth("654321").body("v").send().await.unwrap()).await.1, "unauthorized");
    assert_eq!(error_code(c.put(node.url("/v1/kv/x")).bearer_auth("adm-secret").body("v").send().await.unwrap()).await.1, "unauthorized");
    assert_eq!(c.put(node.url("/v1/kv/x")).bearer_auth("123456").body("v").send().await.unwrap().status(), 200);
    assert_eq!(error_code(c.get(node.url("/admin/digest")).bearer_auth("123456").send().await.unwrap()).await.1, "unauthorized");
    assert_eq!(c.get(node.url("/admin/digest")).bearer_auth("adm-secret").send().await.unwrap().status(), 200);
    // Health and metrics stay open for load balancers and scrapers.
    assert_eq!(c.get(node.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(node.url("/metrics")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn admin_and_observability_endpoints_report_the_node() {
    let (_d, node) = start(&[]);
    let c = Client::new();
    for i in 0..20 {
        c.put(node.url(&format!("/v1/kv/m{i}"))).body("v").send().await.unwrap();
    }
    let h: Value = c.get(node.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["replication"]["mode"], "standalone");
    assert_eq!(h["replication"]["is_leader"], true);
    assert!(h["replication"]["applied_index"].as_u64().unwrap() >= 20);
    assert!(h["replication"]["peers"].as_array().unwrap().is_empty());

    let m = c.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "meridian_replication_mode{mode=\"standalone\"} 1",
        "meridian_is_leader 1",
        "meridian_replication_degraded 0",
        "meridian_commit_index",
        "meridian_applied_index",
        "meridian_replication_lag_seconds",
        "meridian_wal_position",
        "meridian_cluster_leader_changes_total",
        "meridian_raft_term",
        "meridian_replication_bytes_total",
        "meridian_http_request_duration_seconds_bucket",
        "meridian_wal_fsync_duration_seconds_bucket",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }

    let w: Value = c.get(node.url("/admin/wal/position")).send().await.unwrap().json().await.unwrap();
    assert!(w["last_index"].as_u64().unwrap() >= 20 && w["durable_index"] == w["last_index"], "{w}");
    let d: Value = c.get(node.url("/admin/digest")).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["keys"], 20);
    assert_eq!(d["sha256"].as_str().unwrap().len(), 64);
    let s: Value = c.get(node.url("/admin/cluster/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(s["mode"], "standalone");
    let backup = c.get(node.url("/admin/backup")).send().await.unwrap().bytes().await.unwrap();
    assert!(backup.starts_with(b"MERIDSNP"));
    // Mode-specific admin calls name the mode they are not supported in.
    let r = c.post(node.url("/admin/promote")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("standalone"));
}
