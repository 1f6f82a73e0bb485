//! The sockets of each user, and the fan-out: one frame written to each socket of a user with
//! one `sendmsg`, from as many threads as there are cores.
//!
//! This is all the state the floor keeps: a socket and a frame counter per connection, in a
//! map per user. A message is rendered once (its `data` and `ts`); per socket only the
//! frame header and the `seq` are written, into a buffer on the stack, and the three parts go
//! out in one vectored write straight to the socket (no queue, no task woken). A socket that
//! does not take its whole frame at once is shut: the floor keeps no backlog.

use std::collections::HashMap;
use std::io::{IoSlice, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::SockRef;
use tokio::net::TcpStream;

/// One fan-out thread takes this many sockets at a time from a shared cursor, so that a
/// thread that gets less of a core (the load generator shares them) writes fewer.
const CHUNK: usize = 256;

/// A connection: its socket and how many frames it has been sent.
pub struct Peer {
    pub tcp: TcpStream,
    sent: AtomicU64,
}

impl Peer {
    pub fn new(tcp: TcpStream) -> Peer {
        Peer {
            tcp,
            sent: AtomicU64::new(0),
        }
    }
}

type Users = HashMap<String, HashMap<u64, Arc<Peer>>>;

pub struct Sockets {
    users: Mutex<Users>,
    live: AtomicUsize,
    threads: usize,
}

impl Sockets {
    /// `threads`: how many threads one fan-out may write from (one per core is the most that
    /// helps).
    pub fn new(threads: usize) -> Sockets {
        Sockets {
            users: Mutex::default(),
            live: AtomicUsize::new(0),
            threads: threads.max(1),
        }
    }

    fn users(&self) -> MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, user: &str, id: u64, peer: Arc<Peer>) {
        self.users()
            .entry(user.to_string())
            .or_default()
            .insert(id, peer);
        self.live.fetch_add(1, Relaxed);
    }

    pub fn remove(&self, user: &str, id: u64) {
        let mut users = self.users();
        let Some(peers) = users.get_mut(user) else {
            return;
        };
        if peers.remove(&id).is_some() {
            self.live.fetch_sub(1, Relaxed);
        }
        if peers.is_empty() {
            users.remove(user);
        }
    }

    /// Open WebSocket connections.
    pub fn len(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Writes `{"type":"message","seq":<n>,"data":<data>,"ts":"<now>"}` to every socket of
    /// `user`, `n` being that socket's own count of frames. Returns how many sockets took
    /// their frame.
    ///
    /// The map stays locked for the fan-out: connections that open or close meanwhile wait
    /// for it, which costs nothing here and saves copying the list.
    pub fn deliver(&self, user: &str, data: &str) -> usize {
        let rest = format!("\"data\":{data},\"ts\":\"{}\"}}", rfc3339_now());
        let users = self.users();
        let Some(peers) = users.get(user) else {
            return 0;
        };
        let peers: Vec<&Peer> = peers.values().map(|p| &**p).collect();
        let cursor = AtomicUsize::new(0);
        let work = || {
            let mut delivered = 0;
            loop {
                let start = cursor.fetch_add(CHUNK, Relaxed);
                if start >= peers.len() {
                    break delivered;
                }
                let end = (start + CHUNK).min(peers.len());
                for peer in &peers[start..end] {
                    delivered += usize::from(write_frame(peer, rest.as_bytes()));
                }
            }
        };
        let helpers = (peers.len() / CHUNK).min(self.threads).saturating_sub(1);
        if helpers == 0 {
            return work();
        }
        std::thread::scope(|s| {
            let started: Vec<_> = (0..helpers)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("floor-fan-out".into())
                        .spawn_scoped(s, work)
                        .ok()
                })
                .collect();
            let mut delivered = work();
            for h in started {
                delivered += h.join().unwrap_or(0);
            }
            delivered
        })
    }
}

/// One frame to one socket: the RFC 6455 header and `{"type":"message","seq":<n>,` rendered
/// on the stack, `rest` shared, all three in one `sendmsg`.
fn write_frame(peer: &Peer, rest: &[u8]) -> bool {
    let seq = peer.sent.fetch_add(1, Relaxed) + 1;
    let mut prefix = [0u8; 48];
    let prefix_len = {
        let mut w = &mut prefix[..];
        let _ = write!(w, "{{\"type\":\"message\",\"seq\":{seq},");
        48 - w.len()
    };
    let len = prefix_len + rest.len();
    let mut head = [0u8; 10];
    // FIN and the text opcode; a server's frames are not masked.
    head[0] = 0x81;
    let head_len = if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    let parts = [
        IoSlice::new(&head[..head_len]),
        IoSlice::new(&prefix[..prefix_len]),
        IoSlice::new(rest),
    ];
    let sock = SockRef::from(&peer.tcp);
    match sock.send_vectored(&parts) {
        Ok(n) if n == head_len + len => true,
        _ => {
            // Full, cut or gone: with no backlog to finish the frame, the stream is over.
            let _ = sock.shutdown(std::net::Shutdown::Both);
            false
        }
    }
}

/// Now as RFC 3339 in UTC with milliseconds (`2026-11-22T10:00:00.000Z`), the `ts` of
/// tether's frames, so that the frames are the same size.
pub fn rfc3339_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    rfc3339(ms)
}

pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}
