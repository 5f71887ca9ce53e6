//! Bytes damaged inside `state.redb` are never served as data (issue 9, "also found"): every
//! stored value carries a checksum checked on read, and a mismatch answers 500 `internal`,
//! logs the key, and shows up in `/health`.

mod common;

use common::{http, Node};

const CANARY: &[u8] = b"meridian-canary-7f3a9c1e5b2d4680-value";

#[test]
fn a_value_damaged_on_disk_is_a_500_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[]);
    for i in 0..20 {
        let (s, _) = http("PUT", &node.url(&format!("/v1/kv/other{i}")), Some(format!("plain-{i}").into_bytes()));
        assert_eq!(s, 200);
    }
    let (s, _) = http("PUT", &node.url("/v1/kv/victim"), Some(CANARY.to_vec()));
    assert_eq!(s, 200);
    assert_eq!(node.terminate(), 0);

    // Flip one bit in every copy of the value redb holds (a page may exist twice).
    let path = data.join("state.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let hits: Vec<usize> = bytes.windows(CANARY.len()).enumerate().filter(|(_, w)| *w == CANARY).map(|(i, _)| i).collect();
    assert!(!hits.is_empty(), "the value is not stored verbatim in state.redb");
    for at in &hits {
        bytes[at + 20] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();
    let mut damaged = CANARY.to_vec();
    damaged[20] ^= 0x01;

    node.restart();
    let (status, body) = http("GET", &node.url("/v1/kv/victim"), None);
    assert_ne!(body, damaged, "the damaged value was served as data (status {status})");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "internal", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("victim"), "{v}");

    // The damage is local to that key: the others are still served.
    let (status, body) = http("GET", &node.url("/v1/kv/other7"), None);
    assert_eq!((status, body.as_slice()), (200, &b"plain-7"[..]));
    let (status, body) = http("GET", &node.url("/health"), None);
    let health = String::from_utf8_lossy(&body);
    assert!(health.contains("checksum") && health.contains("victim"), "health ({status}) does not mention the damage: {health}");
    assert!(node.log_text().contains("checksum mismatch"), "no log line for the damage:\n{}", node.log_text());
}
