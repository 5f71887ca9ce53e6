//! Bookmarks: opaque tokens for causal consistency (Neo4j's model).
//!
//! A write's answer carries a bookmark naming the position it was committed at; a read that
//! presents it is served only once the serving node has applied that position. The token is
//! `mb1.<epoch hex>.<index hex>`; clients must treat it as opaque, and anything that does not
//! parse is rejected as a bad request rather than ignored (ignoring would silently weaken the
//! read).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bookmark {
    pub epoch: u64,
    pub index: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed bookmark {0:?}: expected a token returned by a Meridian write")]
pub struct BadBookmark(pub String);

impl fmt::Display for Bookmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mb1.{:x}.{:x}", self.epoch, self.index)
    }
}

impl FromStr for Bookmark {
    type Err = BadBookmark;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBookmark(s.chars().take(64).collect());
        let mut parts = s.split('.');
        if parts.next() != Some("mb1") {
            return Err(bad());
        }
        let mut num = || -> Result<u64, BadBookmark> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 16 {
                return Err(bad());
            }
            u64::from_str_radix(p, 16).map_err(|_| bad())
        };
        let epoch = num()?;
        let index = num()?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Bookmark { epoch, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmark_round_trips_and_rejects_garbage() {
        let b = Bookmark { epoch: 3, index: 0xabc };
        assert_eq!(b.to_string().parse::<Bookmark>().unwrap(), b);
        for bad in ["", "mb1", "mb1.1", "mb1.1.2.3", "xx.1.2", "mb1.zz.1", "mb1.1.", "mb1.11111111111111111.1"] {
            assert!(bad.parse::<Bookmark>().is_err(), "{bad} accepted");
        }
    }
}
