//! The SSE transport: `GET /sse`, one connection as a `text/event-stream`.
//!
//! Same credentials as `/ws` (never a first frame: an event stream has no client frames),
//! registered with connectionType `sse`. Every server frame becomes an event named for its
//! `type`, with `id: <connectionId>:<seq>` where it has a seq; heartbeats are SSE comments.
//! `Last-Event-ID` resumes like a WebSocket resume: the reconnecting browser cannot add a
//! resume token, so the credential's user owning that connection is what authorizes it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::outbox::Next;
use super::{authenticate, new_conn, welcome, Handshake};
use crate::api::Req;
use crate::app::App;
use crate::error::{Disconnect, Fate};
use crate::model::ConnType;
use crate::registry::{Live, ResumeRequest};

fn refuse(status: StatusCode, d: &Disconnect) -> Response {
    let body = json!({"error": {"code": if status == StatusCode::UNAUTHORIZED { "unauthorized" } else { "unavailable" }, "message": d.reason, "closeCode": d.code}});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

pub async fn handle(app: Arc<App>, req: &Req) -> Response {
    if !app.is_ready() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &Disconnect::server_full());
    }
    let mut hs =
        Handshake::from_request(&app, &req.headers, Some(&req.query), req.peer.map(|p| p.0));
    let Some(cred) = hs.credential.take() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            &Disconnect::unauthorized("missing credential"),
        );
    };
    let identity = match authenticate(&app, &cred) {
        Ok(i) => i,
        Err(d) => return refuse(StatusCode::UNAUTHORIZED, &d),
    };
    let resume = hs.resume.take().or_else(|| {
        let (conn, seq) = hs.last_event_id.as_deref()?.rsplit_once(':')?;
        Some(ResumeRequest {
            connection_id: conn.to_string(),
            token: String::new(),
            last_seq: seq.parse().ok(),
        })
    });
    let trusted_resume = resume.as_ref().is_some_and(|r| r.token.is_empty());
    let new = new_conn(&app, &hs, identity, ConnType::Sse, resume);
    let (id, linked_session) = (new.id, new.session_id.clone());
    let reg = match app.registry.register_with(new, trusted_resume) {
        Ok(r) => r,
        Err(d) if d.code == 4501 => return refuse(StatusCode::UNAUTHORIZED, &d),
        Err(d) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &d),
    };
    let live = Live::new(id, app.config.outbound_queue_bytes);
    if let Err(e) = app.store.commit().await {
        tracing::error!(error = %e, "cannot make a connection durable");
        return crate::error::ApiError::internal(e).status.into_response();
    }
    if !app
        .registry
        .activate(&id, &live, reg.replay_after, |rec| welcome(&app, &reg, rec))
    {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &Disconnect::evicted());
    }
    super::session_still_live(&app, &id, linked_session.as_deref());

    let state = SseState {
        app: app.clone(),
        live,
        guard: Some(app.tasks.enter()),
        pending: Vec::new(),
        done: false,
    };
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            match st.live.outbox.next().await {
                Next::Send(frames) => {
                    st.pending = frames
                        .into_iter()
                        .filter_map(|m| to_event(&st.live, m))
                        .rev()
                        .collect();
                }
                Next::Close(d) => {
                    // `finish` counts the close code in the metrics (once).
                    st.pending = vec![warp::sse::Event::default()
                        .event("disconnect")
                        .data(d.frame())];
                    st.finish(d.fate, Some(d.code));
                    st.done = true;
                }
            }
        }
    });
    let keep_alive = warp::sse::keep_alive()
        .interval(Duration::from_millis(app.config.heartbeat_interval_ms))
        .text("heartbeat");
    warp::sse::reply(keep_alive.stream(events)).into_response()
}

#[derive(Deserialize)]
struct TypeSeq<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
}

fn to_event(live: &Live, m: Message) -> Option<warp::sse::Event> {
    let Message::Text(text) = m else { return None };
    let head: TypeSeq = serde_json::from_str(&text).ok()?;
    let mut ev = warp::sse::Event::default().event(head.kind);
    if let Some(seq) = head.seq {
        ev = ev.id(format!("{}:{seq}", live.id()));
    }
    Some(ev.data(text.as_str()))
}

struct SseState {
    app: Arc<App>,
    live: Arc<Live>,
    guard: Option<crate::app::TaskGuard>,
    pending: Vec<warp::sse::Event>,
    done: bool,
}

impl SseState {
    fn finish(&mut self, fate: Fate, code: Option<u16>) {
        if self.guard.take().is_some() {
            self.app.registry.finish(&self.live, fate, code);
        }
    }
}

impl Drop for SseState {
    /// The client went away (the response stream was dropped): like a socket lost without a
    /// close frame, the connection stays resumable.
    fn drop(&mut self) {
        self.finish(Fate::Detach, None);
    }
}
