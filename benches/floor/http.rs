//! Just enough HTTP/1.1 for the load generator: a request head, its `Content-Length`
//! body, keep-alive, and a JSON answer. The WebSocket upgrade request is read the same way.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head (and the body) is refused past this.
const MAX_REQUEST: usize = 64 * 1024;

pub struct Request {
    pub method: String,
    pub target: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated header `name` holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of `key` in the query string, as sent (not percent-decoded).
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The bytes of a connection read but not yet taken as a request.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    /// The next request, or `None` when the peer closed between requests.
    pub async fn next(&mut self, tcp: &mut TcpStream) -> io::Result<Option<Request>> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_REQUEST {
                return Err(io::ErrorKind::InvalidData.into());
            }
            self.buf.reserve(1024);
            if tcp.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end - 4])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut req = Request {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let len: usize = match req.header("content-length") {
            Some(v) => v
                .parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
            None => 0,
        };
        if len > MAX_REQUEST {
            return Err(io::ErrorKind::InvalidData.into());
        }
        while self.buf.len() < head_end + len {
            self.buf.reserve(head_end + len - self.buf.len());
            if tcp.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        req.body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(Some(req))
    }

    /// What was read past the last request (bytes a WebSocket client sent after its upgrade
    /// request).
    pub fn into_rest(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes a JSON answer; the connection stays open for the next request.
pub async fn respond(tcp: &mut TcpStream, status: u16, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(text.as_bytes()).await
}
