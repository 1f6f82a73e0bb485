//! Backup, restore and inspect of a data directory.

use std::sync::Arc;

use warp::reply::Response;

use crate::app::App;
use crate::config::{BackupArgs, InspectArgs, RestoreArgs};
use crate::error::ApiError;

pub async fn http_snapshot(_app: &Arc<App>) -> Result<Response, ApiError> {
    Err(ApiError::new(
        warp::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "backups are not available yet",
    ))
}

pub async fn backup(_args: BackupArgs) -> Result<(), String> {
    Err("backup is not available yet".into())
}

pub fn restore(_args: RestoreArgs) -> Result<(), String> {
    Err("restore is not available yet".into())
}

pub fn inspect(_args: InspectArgs) -> Result<(), String> {
    Err("inspect is not available yet".into())
}
