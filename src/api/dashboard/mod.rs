//! `GET /dashboard`: the operator's page (SPEC §12), built into the binary.
//!
//! Three files beside this one, served as they are: the page, its script and its style.
//! Nothing is fetched from anywhere else, and the Content-Security-Policy says so to the
//! browser: the page may load only its own script and style and talk only to this origin.
//! The page itself holds no secret; it asks for an API key, keeps it in the tab's
//! `sessionStorage` and sends it as a header on every API call it makes (never in a URL).

use warp::http::{header, HeaderValue, Method};
use warp::reply::{Reply, Response};

use super::{not_allowed, Ctx, Result};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Only this origin's script, style and API; no framing, no forms elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub fn route(ctx: &Ctx<'_>, rest: &[&str]) -> Result<Response> {
    let file = match rest {
        [] | [""] => Some((PAGE, "text/html; charset=utf-8")),
        ["dashboard.js"] => Some((SCRIPT, "text/javascript; charset=utf-8")),
        ["dashboard.css"] => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    };
    let Some((body, kind)) = file else {
        return Err(super::no_route(ctx.req));
    };
    if ctx.req.method != Method::GET {
        return Err(not_allowed(ctx.req, &[Method::GET]));
    }
    let mut res = body.into_response();
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    Ok(res)
}
