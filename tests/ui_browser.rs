//! The cluster page in a real browser: headless Chromium loads `/ui` from the standby of a
//! running HA pair, the DOM shows both nodes with their roles, and after a kill -9 of the
//! primary the same page — never reloaded — shows the standby as the new primary and the
//! old one as down. Skipped, saying why, where Chromium is not installed (Debian: `chromium`).
//!
//! `MERIDIAN_UI_SCREENSHOT_DIR=DIR` keeps the screenshots (`ui-pair.png`, `ui-failover.png`).

mod common;

use std::time::{Duration, Instant};

use common::browser::{find_chromium, Browser};
use common::ha::{HaOpts, HaPair};

/// `[node, role, row class]` of every row the page shows.
const ROWS: &str = "JSON.stringify([...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.node, r.dataset.role, r.className]))";

fn rows(b: &mut Browser) -> Vec<(String, String, String)> {
    let text = b.eval(ROWS);
    serde_json::from_str::<Vec<(String, String, String)>>(text.as_str().unwrap_or("[]")).unwrap_or_default()
}

/// Polls the open page until `want` holds for its rows.
fn wait_rows(b: &mut Browser, within: Duration, what: &str, want: impl Fn(&[(String, String, String)]) -> bool) -> Vec<(String, String, String)> {
    let start = Instant::now();
    loop {
        let r = rows(b);
        if want(&r) {
            return r;
        }
        assert!(start.elapsed() < within, "the page never showed {what}; it shows {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has(r: &[(String, String, String)], node: &str, role: &str) -> bool {
    r.iter().any(|(n, ro, _)| n == node && ro == role)
}

#[test]
fn the_cluster_page_follows_a_failover_without_a_reload() {
    let Some(chromium) = find_chromium() else {
        eprintln!("SKIPPED the_cluster_page_follows_a_failover_without_a_reload: no Chromium found (apt-get install chromium, or set MERIDIAN_CHROMIUM)");
        return;
    };
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    for i in 0..20 {
        let (s, _) = common::http("PUT", &pair.a.url(&format!("/v1/kv/k{i}")), Some(b"v".to_vec()));
        assert_eq!(s, 200);
    }
    let shots = std::env::var_os("MERIDIAN_UI_SCREENSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| pair.dir.path().to_path_buf());
    let mut b = Browser::start(&chromium, &pair.dir.path().join("chromium"));
    b.navigate(&pair.b.url("/ui"));

    let r = wait_rows(&mut b, Duration::from_secs(20), "node-a primary and node-b standby", |r| has(r, "node-a", "primary") && has(r, "node-b", "standby"));
    eprintln!("before the kill the page shows {r:?}");
    // Let the chart gather a few seconds of samples before the picture.
    std::thread::sleep(Duration::from_secs(4));
    let legend = b.eval("document.getElementById('legend').innerText");
    assert!(legend.as_str().is_some_and(|l| l.contains("node-a") && l.contains("node-b")), "the lag chart has no line per node: {legend}");
    b.screenshot(&shots.join("ui-pair.png"));

    // A mark that a reload would wipe out.
    b.eval("window.__noReload = 'still here'");
    pair.a.kill9();
    let r = wait_rows(&mut b, Duration::from_secs(20), "node-b primary and node-a down", |r| {
        has(r, "node-b", "primary") && r.iter().any(|(n, _, class)| n == "node-a" && class.contains("down"))
    });
    eprintln!("after the kill the page shows {r:?}");
    assert_eq!(b.eval("window.__noReload").as_str(), Some("still here"), "the page was reloaded");
    std::thread::sleep(Duration::from_secs(2));
    b.screenshot(&shots.join("ui-failover.png"));
    eprintln!("screenshots in {}", shots.display());
}
