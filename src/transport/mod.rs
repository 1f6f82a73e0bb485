//! Transports: one connection's life over a socket. [`ws`] for WebSocket, [`sse`] for
//! Server-Sent Events. Each reads its request into a [`Handshake`], hands the node a
//! [`crate::hub::Handle`] over its own [`crate::hub::Transport`], and runs the socket until
//! it ends; the lifecycle itself is the node's ([`crate::node::Node::connect`]). What both
//! share (where credentials and device info come from) is here.

pub mod sse;
pub mod ws;

use std::net::SocketAddr;

use warp::http::HeaderMap;

use crate::config::Config;
use crate::node::{Handshake, Presented, ResumeRequest};

pub use crate::listener::PeerAddr;

pub use crate::listener::ConnAbort;

/// Parses a query string into decoded pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes one URL path segment: `%XX` escapes only; `+` is a plain character in a path
/// (`bob+1@example.com` is a user id, not "bob 1@example.com").
pub fn path_segment(s: &str) -> String {
    percent_decode(s, false)
}

/// `%XX` escapes, and in a query (form encoding) `+` for a space.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            // Two hex digits exactly: `u8::from_str_radix` alone would take `%+1` as 0x01.
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two ASCII digits");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header's value as text: its bytes without the spaces and tabs around it (RFC 9110
/// §5.5). Bytes past ASCII (obs-text) are kept, decoded lossily: a credential that is not
/// ASCII is still the one presented, and is refused, rather than skipped in favour of the
/// next source; a Cookie header with one such cookie still carries the session cookie.
fn field_text(value: &[u8]) -> String {
    String::from_utf8_lossy(trim_ows(value)).into_owned()
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ows(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// The session cookie (RFC 6265 §4.2.1): the first `name=value` pair with that name, across
/// every Cookie header in order (HTTP/2 may split one into several). A value in one pair of
/// double quotes is what is between them (§4.1.1); a stray quote is part of the value.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all("cookie").iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|kv| {
            let kv = trim_ows(kv);
            let eq = kv.iter().position(|&b| b == b'=')?;
            (&kv[..eq] == name.as_bytes()).then(|| {
                let val = &kv[eq + 1..];
                let val = match val {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => val,
                };
                String::from_utf8_lossy(val).into_owned()
            })
        })
    })
}

/// Reads credentials (SPEC §2 order: bearer header, `token` query, session id from cookie,
/// header or query), resume parameters and device info from a request.
///
/// A credential that is there but empty (`?token=`, `?session_id=`, `Authorization:
/// Bearer `, an empty `X-Session-Id`) is presented as it is, and refused at once: it is
/// not the absence of one, which would have the connection wait `auth_timeout_ms` for a
/// first frame that such a client is not going to send. An empty session cookie is taken
/// as none (a browser may keep one after a logout).
pub fn handshake(
    config: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<SocketAddr>,
) -> Handshake {
    let q = query_pairs(query);
    let param = |name: &str| {
        q.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let given = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let present = |name: &str| headers.get(name).map(|v| field_text(v.as_bytes()));
    let header = |name: &str| present(name).filter(|s| !s.is_empty());

    let bearer = present("authorization").and_then(|h| {
        let (scheme, rest) = h.split_once(' ').unwrap_or((&h, ""));
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim_matches([' ', '\t']).to_string())
    });
    let credential = bearer
        .or_else(|| given("token"))
        .map(Presented::Token)
        .or_else(|| {
            // An empty cookie is no session id (a browser may keep one after a logout).
            cookie(headers, &config.session_cookie)
                .filter(|c| !c.is_empty())
                .or_else(|| present("x-session-id"))
                .or_else(|| given("session_id"))
                .map(Presented::Session)
        });
    let resume = param("resume").map(|id| ResumeRequest {
        connection_id: id,
        token: param("resume_token").unwrap_or_default(),
        last_seq: param("last_seq").and_then(|s| s.parse().ok()),
    });
    let forwarded = if config.trust_proxy {
        header("x-forwarded-for").and_then(|h| h.split(',').next().map(|s| s.trim().to_string()))
    } else {
        None
    };
    Handshake {
        credential,
        resume,
        ip: forwarded
            .or_else(|| peer.map(|p| p.ip().to_string()))
            .unwrap_or_default(),
        user_agent: header("user-agent").unwrap_or_default(),
        client_version: header("x-client-version").or_else(|| param("client_version")),
        last_event_id: header("last-event-id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_escape_is_two_hex_digits() {
        assert_eq!(path_segment("a%2Fb%41"), "a/bA");
        // `u8::from_str_radix` takes a sign; RFC 3986 §2.1 does not.
        assert_eq!(path_segment("%+1%-1%+f"), "%+1%-1%+f");
        assert_eq!(
            query_pairs(Some("k=%+41&x=%4&y=a+b%2B")),
            [
                ("k".to_string(), "% 41".to_string()),
                ("x".to_string(), "%4".to_string()),
                ("y".to_string(), "a b+".to_string()),
            ]
        );
    }

    #[test]
    fn an_empty_session_cookie_is_no_credential() {
        let config = Config::default();
        let mut h = HeaderMap::new();
        h.insert("cookie", "tether_sid=".parse().unwrap());
        h.insert("x-session-id", "from-header".parse().unwrap());
        let session = |s: &str| Some(Presented::Session(s.to_string()));
        assert_eq!(
            handshake(&config, &h, None, None).credential,
            session("from-header")
        );
        h.remove("x-session-id");
        assert_eq!(
            handshake(&config, &h, Some("session_id=q"), None).credential,
            session("q")
        );
        h.insert("cookie", "a=1; tether_sid=\"\"".parse().unwrap());
        assert_eq!(handshake(&config, &h, None, None).credential, None);
        h.insert("cookie", "tether_sid=s1".parse().unwrap());
        assert_eq!(handshake(&config, &h, None, None).credential, session("s1"));
    }
}
