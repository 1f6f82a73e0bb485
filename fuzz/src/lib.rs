//! What more than one fuzz target needs: references written from the standards, not from
//! tether's code, for the targets to hold tether to.

/// RFC 3986 §2.1 percent-decoding: `%` and two hex digits is the byte they spell; any other
/// `%` is itself. In a query (`application/x-www-form-urlencoded`) `+` is a space.
/// Bytes that are not UTF-8 become U+FFFD, as tether decodes them.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2]);
            if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() {
                out.push(hex(h) << 4 | hex(l));
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b[i] == b'+' {
            b' '
        } else {
            b[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> u8 {
    (c as char).to_digit(16).expect("a hex digit") as u8
}
