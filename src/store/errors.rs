//! What a store's writes and reads can fail with.

use crate::protocol::Disconnect;

use super::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir} is in use by another tether{pid} (lock file {lock}); stop it first or choose another --data-dir")]
    Locked {
        dir: String,
        lock: String,
        pid: String,
    },
    #[error("cannot use data directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("cannot open the store in {dir}: {detail}")]
    Open { dir: String, detail: String },
    #[error("the store in {dir} has schema version {found}; this tether reads version {SCHEMA_VERSION}. Use the tether release that wrote it, or restore a backup")]
    Schema { dir: String, found: u32 },
    #[error("the store in {dir} is damaged: {detail}. Nothing was changed; restore a backup (tether restore) or move the directory aside")]
    Damaged { dir: String, detail: String },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// The store cannot take writes now (it may later): refused, never half done.
    #[error("{0}")]
    Unavailable(String),
    /// A stored record (a Redis key) that does not decode.
    #[error("the stored record {key} does not decode: {detail}")]
    BadRecord { key: String, detail: String },
    /// The store refuses writes for a reason with its own code (a full disk: 507; a stalled
    /// or failed flush: 503); the message is for the operator.
    #[error("{message}")]
    Refused {
        code: crate::protocol::ErrorCode,
        message: String,
        /// Said to end users (sockets), without an operator's details.
        client_message: &'static str,
    },
}

impl From<crate::durability::StoreUnwritable> for StoreError {
    fn from(e: crate::durability::StoreUnwritable) -> Self {
        use crate::durability::StoreUnwritable as U;
        use crate::protocol::ErrorCode;
        let code = match e {
            U::DiskFull { .. } => ErrorCode::InsufficientStorage,
            U::FlushStalled { .. } => ErrorCode::StoreStalled,
            U::Failed { .. } => ErrorCode::StoreFailed,
        };
        StoreError::Refused {
            code,
            message: e.to_string(),
            client_message: e.client_message(),
        }
    }
}

impl StoreError {
    /// The code and message of a refused write, as a socket's `error` frame says it.
    pub fn for_client(&self) -> (crate::protocol::ErrorCode, String) {
        use crate::protocol::ErrorCode;
        match self {
            StoreError::Refused {
                code,
                client_message,
                ..
            } => (*code, client_message.to_string()),
            StoreError::Unavailable(why) => (ErrorCode::Unavailable, why.clone()),
            _ => (ErrorCode::Internal, "the store refused the write".into()),
        }
    }
}

/// Why an admission failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Refused by the rules (a resume of another user's connection, the server full).
    #[error("{}", .0.reason)]
    Refused(Disconnect),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Disconnect> for AdmitError {
    fn from(d: Disconnect) -> Self {
        AdmitError::Refused(d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unknown session")]
    Unknown,
    /// The session's data, merged, would pass `session_max_bytes`: nothing was written.
    #[error("the session data would be {bytes} bytes of JSON, over session_max_bytes ({max})")]
    TooLarge { bytes: usize, max: usize },
    /// The user has `max_sessions_per_user` live sessions already: nothing was written.
    #[error(
        "the user has {max} live sessions, the most max_sessions_per_user allows; delete one first"
    )]
    TooMany { max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for SessionError {
    fn from(e: sled::Error) -> Self {
        SessionError::Store(e.into())
    }
}

impl From<crate::codec::CodecError> for SessionError {
    fn from(e: crate::codec::CodecError) -> Self {
        SessionError::Store(e.into())
    }
}
