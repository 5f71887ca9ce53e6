//! `MERIDIAN_READ_TOKEN`: a data token that may only read. GETs on `/v1` pass with it;
//! writes with it are 403 (a valid token of the wrong kind), no token or a wrong one is 401,
//! and it opens nothing under `/admin`.

mod common;

use common::{run_to_exit, Node};

fn call(method: &str, url: &str, token: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut rb = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.body(b.to_vec());
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn the_read_token_reads_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(
        &dir.path().join("d"),
        &[("MERIDIAN_API_TOKEN", "rw-token"), ("MERIDIAN_READ_TOKEN", "ro-token"), ("MERIDIAN_ADMIN_TOKEN", "admin-token")],
    );
    let key = n.url("/v1/kv/k");
    assert_eq!(call("PUT", &key, Some("rw-token"), Some(b"v1")).0, 200);

    // Allowed: every read.
    assert_eq!(call("GET", &key, Some("ro-token"), None), (200, "v1".into()));
    assert_eq!(call("GET", &n.url("/v1/kv?prefix=k"), Some("ro-token"), None).0, 200);

    // Refused: every write, with 403 and a message naming the token's limit.
    for (method, url, body) in [
        ("PUT", key.clone(), Some(&b"v2"[..])),
        ("DELETE", key.clone(), None),
        ("POST", n.url("/v1/txn"), Some(&br#"{"compare":[],"success":[{"op":"put","key":"k","value_b64":"eA=="}],"failure":[]}"#[..])),
    ] {
        let (s, body) = call(method, &url, Some("ro-token"), body);
        assert_eq!(s, 403, "{method} {url} with the read token: {body}");
        assert!(body.contains("MERIDIAN_READ_TOKEN") && body.contains("\"unauthorized\""), "{body}");
    }
    assert_eq!(call("GET", &key, Some("rw-token"), None), (200, "v1".into()), "a refused write changed the value");

    // No token, a wrong one, and the read token on admin: 401.
    assert_eq!(call("GET", &key, None, None).0, 401);
    assert_eq!(call("GET", &key, Some("ro-tokenX"), None).0, 401);
    assert_eq!(call("GET", &n.url("/admin/digest"), Some("ro-token"), None).0, 401);
    assert_eq!(call("GET", &n.url("/admin/digest"), Some("admin-token"), None).0, 200);
}

#[test]
fn a_read_token_without_an_api_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    let (code, _, err) = run_to_exit(&[], &[("MERIDIAN_READ_TOKEN", "ro-token"), ("MERIDIAN_DATA_DIR", &data), ("MERIDIAN_HTTP_ADDR", "127.0.0.1:0")], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MERIDIAN_READ_TOKEN") && err.contains("MERIDIAN_API_TOKEN"), "{err}");
}
