//! The service in front of the routes: what every request goes through before `/ws` or a
//! warp route sees it, and what its body and response report back to the connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::json;
use warp::http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use warp::reply::Reply;

use super::admission::{Admission, Pending};
use super::clock::instant;
use super::connection::Slot;

/// Ends the HTTP connection a request came on, put into request extensions by the
/// listener. A response body can end only when its client reads it: an SSE stream whose
/// client stopped reading would keep its connection, and the kernel's send buffer behind
/// it, for as long as that client likes. Its transport drops the connection instead.
#[derive(Debug, Clone, Default)]
pub struct ConnAbort(std::sync::Arc<tokio::sync::Notify>);

impl ConnAbort {
    /// Asks the listener to drop the connection now.
    pub fn abort(&self) {
        // A permit is kept if the listener is not waiting at this instant.
        self.0.notify_one();
    }

    /// Resolves once [`ConnAbort::abort`] was called.
    pub async fn aborted(&self) {
        self.0.notified().await
    }
}

/// Put into a `101` response's extensions: the response is not written when hyper writes it
/// but kept, and goes out in one write with the upgraded socket's first frame
/// ([`super::Watched::into_parts`]). Only for a client that sends nothing before that frame
/// (its credential came with the request): one that waits for the `101` to send its
/// first-frame `auth` would wait forever.
#[derive(Debug, Clone, Copy)]
pub struct WithFirstFrame;

/// The peer address of an HTTP connection, put into request extensions for the routes.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

pub(super) struct Front<S> {
    routes: S,
    peer: SocketAddr,
    slot: Arc<Slot>,
    admission: Arc<Admission>,
    abort: ConnAbort,
}

impl<S> Front<S> {
    pub(super) fn new(
        routes: S,
        peer: SocketAddr,
        slot: Arc<Slot>,
        admission: Arc<Admission>,
        abort: ConnAbort,
    ) -> Self {
        Front {
            routes,
            peer,
            slot,
            admission,
            abort,
        }
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for Front<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<Inner>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let routes = self.routes.clone();
        let slot = self.slot.clone();
        let admission = self.admission.clone();
        let peer = self.peer;
        let abort = self.abort.clone();
        admission.leave_idle(&slot);
        slot.request_started();
        // Counts the response as written even if hyper drops this future unanswered.
        let written = Written::new(&slot, &admission);
        Box::pin(async move {
            let res = serve(routes, peer, abort, &slot, &admission, req).await;
            let res = if slot.body_timed_out.swap(false, Relaxed) {
                boxed(closing(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive within http_body_timeout_ms",
                )))
            } else {
                res
            };
            if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                // A request completed: the connection is no longer pending.
                admission.settle(&slot);
            } else if res.extensions().get::<WithFirstFrame>().is_some() {
                slot.hold_head.store(true, Relaxed);
            }
            Ok(res.map(|body| ResponseBody {
                inner: body,
                written,
            }))
        })
    }
}

async fn serve<S>(
    mut routes: S,
    peer: SocketAddr,
    abort: ConnAbort,
    slot: &Arc<Slot>,
    admission: &Arc<Admission>,
    mut req: Request<Incoming>,
) -> Response<Inner>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<Inner>, Error = Infallible>
        + Send,
    S::Future: Send,
{
    if let Some(refusal) = refuse_early(&mut req, admission.max_body_bytes) {
        return boxed(refusal);
    }
    req.extensions_mut().insert(PeerAddr(peer));
    req.extensions_mut().insert(abort);
    if req.uri().path() == "/ws" && slot.pending.load(Relaxed) {
        req.extensions_mut().insert(Pending::cell(slot, admission));
    }
    let handled = AssertUnwindSafe(async {
        let deadline = slot.request_at() + admission.timeouts.body_ms;
        let req = req.map(|body| RequestBody::new(body, slot.clone(), deadline));
        let Ok(res) = routes.call(req).await;
        res
    })
    .catch_unwind()
    .await;
    // The panic itself was logged by the panic hook.
    handled.unwrap_or_else(|_| {
        boxed(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        ))
    })
}

/// The body of every response: warp's, an SSE stream's, or a small JSON refusal.
pub type Inner = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn boxed(r: warp::reply::Response) -> Response<Inner> {
    r.map(|b| b.map_err(Into::into).boxed())
}

/// Answers what no route should see. Normalizes an absolute-form target (`GET http://host/p`,
/// RFC 9112 §3.2.2: a server must accept it) to its path, and serves `HEAD` as `GET`.
fn refuse_early(req: &mut Request<Incoming>, max_body_bytes: u64) -> Option<warp::reply::Response> {
    let uri = req.uri();
    if uri.authority().is_some() || uri.scheme().is_some() {
        let http = matches!(uri.scheme_str(), Some("http" | "https"));
        if !http {
            // Authority form (`CONNECT host:port`, `GET host:port`): this is not a proxy.
            return Some(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request target must be a path, like /health",
            ));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/" } else { path };
        match path.parse::<Uri>() {
            Ok(origin) => *req.uri_mut() = origin,
            Err(_) => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request target has no valid path",
                ))
            }
        }
    } else if !req.uri().path().starts_with('/') && req.uri().path() != "*" {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target must be a path, like /health",
        ));
    }
    // A declared body over the limit is refused before any of it is read, so no
    // `100 Continue` goes out and nothing is buffered (chunked bodies are counted as they
    // are read, by the route).
    if req.body().size_hint().lower() > max_body_bytes {
        return Some(closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body is over max_body_bytes ({max_body_bytes} bytes)"),
        )));
    }
    // `/sse` and `/ws` open connections; a HEAD of them would open one only to drop it.
    if req.method() == Method::HEAD && !matches!(req.uri().path(), "/ws" | "/sse") {
        *req.method_mut() = Method::GET;
    }
    None
}

fn error(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = json!({"error": {"code": code, "message": message}});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Closes the connection after this response: the rest of the request is not read.
fn closing(mut res: warp::reply::Response) -> warp::reply::Response {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Notes the response as written when dropped: hyper drops a response body once it has
/// written it (or given up on the connection).
struct Written {
    slot: Arc<Slot>,
    admission: Arc<Admission>,
}

impl Written {
    fn new(slot: &Arc<Slot>, admission: &Arc<Admission>) -> Written {
        Written {
            slot: slot.clone(),
            admission: admission.clone(),
        }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.slot.response_written() {
            self.admission.enter_idle(&self.slot);
        }
    }
}

/// A response body that tells the connection when it has been written.
pub struct ResponseBody {
    inner: Inner,
    #[allow(dead_code)] // held for its Drop
    written: Written,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive within `http_body_timeout_ms` of the headers; past it,
/// reading fails and the request is answered 408.
pub struct RequestBody {
    inner: Incoming,
    slot: Arc<Slot>,
    /// Until the body has ended (or failed).
    open: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl RequestBody {
    fn new(inner: Incoming, slot: Arc<Slot>, deadline_ms: u64) -> RequestBody {
        let open = !inner.is_end_stream();
        if open {
            slot.body_opened();
        }
        RequestBody {
            inner,
            slot,
            open,
            deadline: Box::pin(tokio::time::sleep_until(instant(deadline_ms))),
        }
    }

    fn close(&mut self) {
        if std::mem::take(&mut self.open) {
            self.slot.body_closed();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http_body_timeout_ms")]
pub struct BodyTimeout;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.open {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.close();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.close();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.close();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.slot.body_timed_out.store(true, Relaxed);
                    self.close();
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.open
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.close();
    }
}
