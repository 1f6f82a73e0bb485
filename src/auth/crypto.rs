//! Hashing and comparing secrets, and making random ones: the one place tether turns the
//! operating system's randomness into tokens and ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Constant-time equality of two byte strings. Only the length may leak.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// SHA-256 of `data` (API keys, resume tokens).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// How many bytes of the OS's randomness a thread fetches at a time.
const RANDOM_AHEAD: usize = 4096;

thread_local! {
    /// Bytes fetched from the OS and not handed out yet, and where they start.
    static AHEAD: std::cell::RefCell<(Box<[u8; RANDOM_AHEAD]>, usize)> =
        std::cell::RefCell::new((Box::new([0; RANDOM_AHEAD]), RANDOM_AHEAD));
}

/// Fills `out` with the operating system's randomness.
///
/// Every byte comes from the OS's generator (`getrandom`) and is handed out once; a thread
/// fetches 4 KiB at a time and wipes what it hands out, so a connect (an id and a resume
/// token) costs no system call of its own, where it cost two.
///
/// Panics only if the OS has no randomness to give, where nothing safe can be done.
fn fill_random(out: &mut [u8]) {
    if out.len() > RANDOM_AHEAD / 4 {
        getrandom::fill(out).expect("the operating system's random number generator failed");
        return;
    }
    AHEAD.with(|ahead| {
        let (buf, at) = &mut *ahead.borrow_mut();
        if RANDOM_AHEAD - *at < out.len() {
            getrandom::fill(&mut buf[..])
                .expect("the operating system's random number generator failed");
            *at = 0;
        }
        let taken = &mut buf[*at..*at + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        *at += out.len();
    });
}

/// A new random (version 4) UUID, from [`fill_random`].
pub fn new_uuid() -> uuid::Uuid {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// `bytes` random bytes from the OS, base64url without padding.
///
/// Panics only if the OS has no randomness to give, where nothing safe can be done.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new random resume token (256 bits, URL-safe).
pub fn new_token() -> String {
    random_token(32)
}

/// A new session id: 192 random bits, URL-safe.
pub fn new_session_id() -> String {
    random_token(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_and_sha256() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_ids_have_their_lengths_and_differ() {
        let (token, session) = (new_token(), new_session_id());
        assert_eq!((token.len(), session.len()), (43, 32));
        assert_ne!(token, new_token());
        assert_ne!(session, new_session_id());
        assert!(format!("{token}{session}")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn random_bytes_are_never_handed_out_twice_and_ids_are_version_4() {
        // More than one fetch's worth, in sizes that do not divide it.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut b = [0u8; 24];
            fill_random(&mut b);
            assert!(seen.insert(b), "a repeat");
        }
        let mut big = vec![0u8; 5000];
        fill_random(&mut big);
        assert!(big.iter().any(|&b| b != 0));
        let id = new_uuid();
        assert_eq!(id.get_version(), Some(uuid::Version::Random));
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(id, new_uuid());
    }
}
