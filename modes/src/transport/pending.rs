//! Bounds on connections still in their TLS or cluster handshake.
//!
//! Each pending handshake costs little and ends within `connect_timeout`, but anyone who can
//! reach the port could otherwise hold an unbounded number open — and with one shared cap,
//! a stranger's silent connections would take every slot and lock the real peers out. So
//! there are two caps: [`PER_SOURCE`] per source address, and [`GLOBAL`] in all for sources
//! that are not a configured peer's address. A peer's own address is held only to the
//! per-source cap, so a flood from elsewhere cannot keep it out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshakes pending at once from one source address.
pub const PER_SOURCE: usize = 8;
/// Handshakes pending at once from sources that are not a peer's address.
pub const GLOBAL: usize = 256;

pub(crate) struct PendingHandshakes {
    global: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    Source,
    Global,
}

impl Full {
    pub fn describe(self) -> String {
        match self {
            Full::Source => format!("{PER_SOURCE} handshakes already pending from this address"),
            Full::Global => format!("{GLOBAL} handshakes already pending from non-peer addresses"),
        }
    }
}

/// One pending handshake; dropping it frees its slots.
pub(crate) struct Slot {
    owner: Arc<PendingHandshakes>,
    source: IpAddr,
    _global: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.owner.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

impl PendingHandshakes {
    pub fn new() -> Arc<PendingHandshakes> {
        Arc::new(PendingHandshakes { global: Arc::new(Semaphore::new(GLOBAL)), per_source: Mutex::new(HashMap::new()) })
    }

    /// A slot for a handshake from `source`; `peer`: the source is a configured peer's address.
    pub fn try_acquire(self: &Arc<Self>, source: IpAddr, peer: bool) -> Result<Slot, Full> {
        let source = source.to_canonical();
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(source).or_insert(0);
        if *n >= PER_SOURCE {
            return Err(Full::Source);
        }
        let global = if peer {
            None
        } else {
            match self.global.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if *n == 0 {
                        m.remove(&source);
                    }
                    return Err(Full::Global);
                }
            }
        };
        *n += 1;
        Ok(Slot { owner: self.clone(), source, _global: global })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot_and_a_peer_is_never_short_of_one() {
        let p = PendingHandshakes::new();
        let stranger: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<Slot> = (0..PER_SOURCE).map(|_| p.try_acquire(stranger, false).unwrap()).collect();
        assert_eq!(p.try_acquire(stranger, false).err(), Some(Full::Source));
        let others: Vec<Slot> =
            (0..GLOBAL - PER_SOURCE).map(|i| p.try_acquire(IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]), false).unwrap()).collect();
        assert_eq!(p.try_acquire("10.2.0.1".parse().unwrap(), false).err(), Some(Full::Global));
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.try_acquire(peer, true).is_ok());
        drop(held);
        drop(others);
        assert!(p.per_source.lock().unwrap().is_empty());
        assert!(p.try_acquire(stranger, false).is_ok());
    }
}
