//! Embedding Meridian: open a standalone node inside your own process, serve its HTTP API on
//! an ephemeral loopback port, use it, and shut it down cleanly.
//!
//! `cargo run --example embedded`

use meridian::config::Config;
use meridian::node::Node;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let cfg = Config::from_vars([
        ("MERIDIAN_DATA_DIR".to_string(), dir.path().join("data").display().to_string()),
        ("MERIDIAN_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
    ])?;
    let node = Node::open(&cfg).await?;
    let base = format!("http://{}", node.http_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.serve(async move {
        let _ = stop_rx.await;
    }));

    let http = reqwest::Client::new();
    let put: serde_json::Value = http.put(format!("{base}/v1/kv/hello")).body("world").send().await?.json().await?;
    println!("PUT hello -> {put}");
    let value = http.get(format!("{base}/v1/kv/hello")).send().await?.text().await?;
    println!("GET hello -> {value}");

    let _ = stop_tx.send(());
    server.await??;
    println!("node stopped cleanly");
    Ok(())
}
