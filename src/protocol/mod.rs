//! The wire protocol of `/ws` and `/sse` (SPEC §2–§4, `docs/protocol.md`): client frames,
//! server frames and close codes, as types.
//!
//! - [`ClientFrame::parse`] is the one place a client's text frame becomes a value. It reads
//!   the frame's `type` and `id` first, then the fields of that type, so a frame that is
//!   wrong gets an answer that says what was wrong with it, and its `id` echoed exactly as
//!   sent: ids are kept as raw JSON text, so `2^70` comes back as `2^70`, not as a float.
//! - [`ServerFrame`] is every frame the server sends but the two that carry a per-connection
//!   `seq` (`message`, `session.updated`): a fan-out renders those once per socket from a
//!   [`FrameTemplate`], which splices the `seq` into text made once.
//! - [`CloseCode`] is every code of SPEC §4 with its `reconnect` flag and what becomes of the
//!   connection's record ([`Fate`]); [`Disconnect`] is a close with its reason, sent as a
//!   `disconnect` frame and then as the close frame.

mod client;
mod close;
mod errors;
mod server;

pub use client::{BadFrame, ClientFrame, FrameId, Parsed, ResumeField};
pub use close::{CloseCode, Disconnect, Fate};
pub use errors::{ErrorBody, ErrorCode, Skip};
pub use server::{FrameKind, FrameTemplate, ServerFrame, WelcomeLimits};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn ids_are_echoed_exactly_as_sent() {
        let big = r#"{"type":"ping","id":1180591620717411303424}"#;
        let p = ClientFrame::parse(big).unwrap();
        let id = p.id.unwrap();
        let pong = ServerFrame::Pong { id: Some(&id) }.to_text();
        assert_eq!(pong, r#"{"type":"pong","id":1180591620717411303424}"#);
        let p = ClientFrame::parse(r#"{"type":"ping","id":{"a":[1,"x"]}}"#).unwrap();
        let ack = ServerFrame::Ack {
            id: p.id.as_deref().unwrap(),
        }
        .to_text();
        assert_eq!(ack, r#"{"type":"ack","id":{"a":[1,"x"]}}"#);
        assert!(ClientFrame::parse(r#"{"type":"ping","id":null}"#)
            .unwrap()
            .id
            .is_none());
    }

    #[test]
    fn a_bad_frame_says_what_is_wrong_and_keeps_its_id() {
        let e = ClientFrame::parse(r#"{"type":"ack","id":"a1","seq":"x"}"#).unwrap_err();
        assert_eq!(e.message, "ack needs a numeric `seq`");
        assert_eq!(e.id.unwrap().get(), r#""a1""#);
        let e = ClientFrame::parse(r#"{"type":"nope","id":7}"#).unwrap_err();
        assert_eq!(e.message, "unknown frame type");
        assert_eq!(e.id.unwrap().get(), "7");
        for text in ["[1]", "{}", r#"{"type":3}"#, "not json"] {
            let e = ClientFrame::parse(text).unwrap_err();
            assert_eq!(
                e.message, "not a JSON object with a string `type`",
                "{text}"
            );
        }
        let e = ClientFrame::parse(r#"{"type":"session.update","updates":[1]}"#).unwrap_err();
        assert_eq!(e.message, "session.update needs an `updates` object");
    }

    #[test]
    fn a_frame_is_an_object_never_an_array() {
        // serde reads a struct from an array of its fields too; a frame is an object.
        for text in [
            r#"["ping"]"#,
            r#"["ping",{"a":1}]"#,
            r#"["refresh"]"#,
            r#"["auth"]"#,
            r#"["seqz"]"#,
        ] {
            let e = ClientFrame::parse(text).unwrap_err();
            assert_eq!(
                e.message, "not a JSON object with a string `type`",
                "{text}"
            );
            assert!(e.id.is_none());
        }
        let e = ClientFrame::parse(r#"{"type":"auth","id":1,"token":"t","resume":["c","t",1]}"#)
            .unwrap_err();
        assert!(e.message.starts_with("auth needs"), "{}", e.message);
        assert_eq!(e.id.unwrap().get(), "1");
        let p = ClientFrame::parse(
            r#"{"type":"auth","token":"t","resume":{"connectionId":"c","token":"r","lastSeq":1}}"#,
        )
        .unwrap();
        assert!(
            matches!(p.frame, ClientFrame::Auth { resume: Some(ref r), .. } if r.last_seq == Some(1))
        );
    }

    #[test]
    fn a_number_comes_back_as_the_number_that_was_sent() {
        // Each is the shortest text of its f64: read inexactly, it came back as a neighbour
        // (2.5001111111111107e46). Rust's own parse is correctly rounded.
        for text in [
            "2.500111111111111e+46",
            "1.8446144084467442e+29",
            "5e-324",
            "0.1",
        ] {
            let frame = format!(r#"{{"type":"session.update","updates":{{"x":{text}}}}}"#);
            let ClientFrame::SessionUpdate { updates } = ClientFrame::parse(&frame).unwrap().frame
            else {
                panic!("{frame}");
            };
            let sent: f64 = text.parse().unwrap();
            assert_eq!(updates["x"].as_f64(), Some(sent), "{text}");
            let t = FrameTemplate::session_updated("s", &Value::Object(updates), "http", None, "t");
            let back: Value = serde_json::from_str(&t.render(1)).unwrap();
            assert_eq!(back["updates"]["x"].as_f64(), Some(sent), "{text}");
        }
    }

    #[test]
    fn frames_render_as_the_contract_says() {
        let t = FrameTemplate::message(r#"{"a":1}"#, "2026-01-01T00:00:00.000Z");
        let v: Value = serde_json::from_str(&t.render(7)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","seq":7,"data":{"a":1},"ts":"2026-01-01T00:00:00.000Z"})
        );
        let t = FrameTemplate::session_updated(
            "s1",
            &serde_json::json!({"k":null}),
            "websocket",
            None,
            "t",
        );
        let v: Value = serde_json::from_str(&t.render(2)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"session.updated","seq":2,"sessionId":"s1","updates":{"k":null},"source":"websocket","connectionId":null,"ts":"t"})
        );
        let d: Value = serde_json::from_str(&Disconnect::slow_consumer().frame()).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"type":"disconnect","code":4010,"reason":"slow consumer","reconnect":true})
        );
    }

    #[test]
    fn close_codes_say_reconnect_by_range() {
        for c in [
            CloseCode::ShuttingDown,
            CloseCode::ServerFull,
            CloseCode::AuthTimeout,
            CloseCode::SlowConsumer,
        ] {
            assert!(c.reconnect(), "{c:?}");
        }
        for c in [
            CloseCode::Normal,
            CloseCode::TooLarge,
            CloseCode::Unauthorized,
            CloseCode::Evicted,
        ] {
            assert!(!c.reconnect(), "{c:?}");
        }
        assert_eq!(Disconnect::operator(&"x".repeat(300)).reason.len(), 100);
    }
}
