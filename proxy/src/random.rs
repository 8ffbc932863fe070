//! Random hex strings for ids and SCRAM nonces: printable and comma-free, as
//! SCRAM requires of a nonce.

/// `bytes` random bytes as lower-case hex; `Err` when the system has no
/// randomness. Digits come from a table: fmt per byte cost more than the
/// rest of a new session's ids and nonce.
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)?;
    let mut out = String::with_capacity(bytes * 2);
    for b in raw {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    Ok(out)
}

/// A new session id: `ses_`, the milliseconds since 1970 (12 hex digits),
/// then 8 random ones. Ids that grow with time keep each audit index keyed
/// by session appending at its end: with random ids every event of a
/// short session (`pgbench -C`) dirtied a page of its own in that index.
pub fn session_id() -> String {
    static FALLBACK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Without randomness, a counter tells this process's sessions apart.
    let tail = hex(4).unwrap_or_else(|_| {
        let n = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{n:08x}")
    });
    format!("ses_{:012x}{tail}", millis & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_two_digits_per_byte_and_differs() {
        let a = super::hex(18).expect("randomness");
        assert_eq!(a.len(), 36);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::hex(18).expect("randomness"));
    }

    #[test]
    fn session_ids_are_recording_ids_that_sort_by_time() {
        let a = super::session_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::session_id();
        assert!(a < b, "{a} then {b}");
        assert_eq!(a.len(), "ses_".len() + 20);
        assert!(portcullis_protocol::ssh::recording::valid_id(&a), "{a}");
        assert_ne!(a, super::session_id());
    }
}
