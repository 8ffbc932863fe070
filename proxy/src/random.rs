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

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_two_digits_per_byte_and_differs() {
        let a = super::hex(18).expect("randomness");
        assert_eq!(a.len(), 36);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::hex(18).expect("randomness"));
    }
}
