//! Waiting until this node has applied a position: what a read waits for after its bookmark
//! (standalone, `ha_standby`) or after its read index ([`read_round`](crate::read_round)).

/// Waits until `applied` reaches `index`, for at most `wait`.
pub async fn wait_for_applied(
    applied: &mut tokio::sync::watch::Receiver<u64>,
    index: u64,
    wait: std::time::Duration,
) -> Result<(), crate::replicator::ReadError> {
    let reached = tokio::time::timeout(wait, applied.wait_for(|a| *a >= index)).await.map(|r| r.map(|_| ()));
    match reached {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(crate::replicator::ReadError::Unavailable("node is shutting down".into())),
        Err(_) => Err(crate::replicator::ReadError::BookmarkTimeout { wanted: index, applied: *applied.borrow(), waited: wait }),
    }
}
