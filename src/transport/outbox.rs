//! One connection's bounded outbound queue.
//!
//! Producers (the API, the session reactor, the connection's own reader) push frames without
//! ever waiting: a push that would take the queue past `outbound_queue_bytes` marks the
//! connection a slow consumer instead, and its writer closes it with 4010. So one client that
//! stops reading costs at most its own queue and never slows anyone else. What it missed is
//! in its replay buffer for the resume.
//!
//! The queue is a std `Mutex` around a `VecDeque`: every critical section is a push or a
//! drain, never held across an `.await`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::error::Disconnect;

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the one writer (frames or a close to send). `notify_one` keeps a permit when
    /// the writer is busy, so no wake-up is lost, and a push wakes nobody else.
    ready: Notify,
    /// Wakes whoever waits for a close ([`Outbox::closed`]).
    closing: Notify,
    limit: usize,
}

struct Inner {
    frames: VecDeque<Message>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// What the writer should do next.
pub enum Next {
    Send(VecDeque<Message>),
    Close(Disconnect),
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            ready: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    /// Queues a text frame. Returns false if the connection is closing (the frame is dropped:
    /// anything that must survive is in the replay buffer).
    pub fn push_text(&self, text: String) -> bool {
        self.push(Message::text(text))
    }

    pub fn push(&self, msg: Message) -> bool {
        let len = msg.len();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.close.is_some() {
            return false;
        }
        if inner.bytes + len > self.limit {
            inner.close = Some(Disconnect::slow_consumer());
            inner.frames.clear();
            inner.bytes = 0;
            drop(inner);
            self.ready.notify_one();
            self.closing.notify_waiters();
            return false;
        }
        inner.bytes += len;
        inner.frames.push_back(msg);
        let first = inner.frames.len() == 1;
        drop(inner);
        if first {
            self.ready.notify_one();
        }
        true
    }

    /// Asks the writer to send `disconnect` and close. The first close wins.
    pub fn close(&self, d: Disconnect) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.close.is_none() {
            inner.close = Some(d);
        }
        drop(inner);
        self.ready.notify_one();
        self.closing.notify_waiters();
    }

    /// The close asked for, if any.
    pub fn closing(&self) -> Option<Disconnect> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close
            .clone()
    }

    /// Waits for frames or a close. Queued frames go out before a close, except after an
    /// overflow (the queue was dropped then).
    ///
    /// There is one writer per outbox: it is the only one to wait here.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                if !inner.frames.is_empty() {
                    inner.bytes = 0;
                    return Next::Send(std::mem::take(&mut inner.frames));
                }
                if let Some(d) = &inner.close {
                    return Next::Close(d.clone());
                }
            }
            self.ready.notified().await;
        }
    }

    /// Waits until a close is asked for.
    pub async fn closed(&self) -> Disconnect {
        loop {
            let notified = self.closing.notified();
            if let Some(d) = self.closing() {
                return d;
            }
            notified.await;
        }
    }
}
