//! Peer addresses as configured, `host:port` or `[v6]:port`: their host part.

/// The host part of `host:port` or `[v6]:port`: the TLS server name, and what admission
/// matches a client certificate against.
pub(crate) fn host_of(addr: &str) -> &str {
    let host = match addr.rfind(':') {
        Some(i) if !addr[i + 1..].is_empty() && addr[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &addr[..i],
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("node1:7688"), "node1");
        assert_eq!(host_of("127.0.0.1:7688"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7688"), "::1");
        assert_eq!(host_of("node1"), "node1");
    }
}
