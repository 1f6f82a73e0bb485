//! `tether backup`, `tether restore` and `tether inspect`: a data directory copied in and
//! out, in the backup format of [`crate::store::embedded::snapshot`].
//!
//! A running server is snapshotted through `GET /v1/backup`, which holds the store's writes
//! off while it copies, so the copy is one consistent moment. A stopped directory is read
//! directly (its lock is taken, so a running server is refused with a clear message).

use std::io::Read;

use crate::config::{BackupArgs, InspectArgs, RestoreArgs};
use crate::store::embedded::snapshot::{check_records, verify, write_snapshot};
use crate::store::{lock_data_dir, Trees, SCHEMA_VERSION};

/// `tether backup`: from a running server (`--server`) or a stopped data directory.
pub async fn backup(args: BackupArgs) -> Result<(), String> {
    let bytes = match &args.server {
        Some(url) => fetch(url, args.api_key.as_deref()).await?,
        None => {
            let _lock = lock_data_dir(&args.data_dir).map_err(|e| {
                format!("{e}\n(to back up a running server, pass --server http://HOST:PORT)")
            })?;
            if !crate::store::db_path(&args.data_dir).exists() {
                return Err(format!("{} holds no tether store", args.data_dir.display()));
            }
            let trees = Trees::open(&args.data_dir, 16 << 20).map_err(|e| e.to_string())?;
            let secrets = std::fs::read(crate::secrets::path(&args.data_dir)).unwrap_or_default();
            write_snapshot(&trees, &secrets, Vec::new()).map_err(|e| e.to_string())?
        }
    };
    // Check what we got before writing it anywhere.
    verify(&bytes)?;
    crate::secrets::replace_file(&args.out, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    eprintln!("wrote {} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}

/// A minimal HTTP/1.1 GET of `<server>/v1/backup` (plain HTTP on the operator's own box).
async fn fetch(server: &str, key: Option<&str>) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = key.ok_or(
        "no admin API key: pass --api-key (or run where <data-dir>/secrets.toml is readable)",
    )?;
    let rest = server
        .strip_prefix("http://")
        .ok_or("--server must be an http:// URL")?;
    let host = rest.trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let req = format!("GET /v1/backup HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let body = buf[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!(
            "server answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(&body);
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .map_err(|e| e.to_string())?
                .trim(),
            16,
        )
        .map_err(|e| e.to_string())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("truncated chunk")?);
        b = &b[size + 2..];
    }
}

/// `tether restore`: into an empty (or absent) directory only.
pub fn restore(args: RestoreArgs) -> Result<(), String> {
    let mut bytes = Vec::new();
    std::fs::File::open(&args.from)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", args.from.display()))?;
    let snap = verify(&bytes)?;
    // Every record before anything is written: a record tether could not have written (an
    // event seq past 2^53, say) would be served as if it were true.
    check_records(&snap).map_err(|e| format!("{e}; nothing was restored"))?;
    let dir = &args.data_dir;
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.any(|e| e.is_ok_and(|e| e.file_name() != ".gitkeep")) {
            return Err(format!(
                "{} is not empty; restore only into an empty directory",
                dir.display()
            ));
        }
    }
    let _lock = lock_data_dir(dir).map_err(|e| e.to_string())?;
    let trees = Trees::open(dir, 16 << 20).map_err(|e| e.to_string())?;
    let mut records = 0usize;
    for (name, items) in &snap.trees {
        let tree = trees.db.open_tree(name).map_err(|e| e.to_string())?;
        let mut batch = sled::Batch::default();
        for (k, v) in items {
            batch.insert(k.as_slice(), v.as_slice());
            records += 1;
        }
        tree.apply_batch(batch).map_err(|e| e.to_string())?;
    }
    trees.db.flush().map_err(|e| e.to_string())?;
    // The store now carries the backup's id; it is whole, like one stopped cleanly.
    trees
        .record(dir, trees.event_high_water(), true)
        .map_err(|e| e.to_string())?;
    if !snap.secrets.is_empty() {
        crate::secrets::replace_file(&crate::secrets::path(dir), &snap.secrets)
            .map_err(|e| e.to_string())?;
    }
    eprintln!(
        "restored {} records (schema {}) into {}",
        records,
        snap.schema,
        dir.display()
    );
    Ok(())
}

/// Writes a report to stdout. A reader that stops early (`tether inspect | head -3`) closes
/// the pipe: that is the reader being done, not an error, and not a panic as `println!`
/// would make it.
pub fn print_report(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing the report: {e}"))
        }
        _ => Ok(()),
    }
}

/// `tether inspect`: what a stopped data directory holds.
pub fn inspect(args: InspectArgs) -> Result<(), String> {
    let dir = &args.data_dir;
    if !crate::store::db_path(dir).exists() {
        return Err(format!("{} holds no tether store", dir.display()));
    }
    let _lock = lock_data_dir(dir).map_err(|e| e.to_string())?;
    let trees = Trees::open(dir, 16 << 20).map_err(|e| e.to_string())?;
    let mut by_state = std::collections::BTreeMap::<String, u64>::new();
    let mut unreadable = 0u64;
    for item in trees.conns.iter() {
        let (_, v) = item.map_err(|e| e.to_string())?;
        match crate::codec::decode::<crate::model::ConnRecord>(&v) {
            // A stored Active record is Detached as soon as a server starts on it.
            Ok(r) => *by_state.entry(r.state.as_str().to_string()).or_default() += 1,
            Err(_) => unreadable += 1,
        }
    }
    let report = serde_json::json!({
        "dataDir": dir.display().to_string(),
        "schemaVersion": SCHEMA_VERSION,
        "formatVersion": crate::codec::FORMAT_VERSION,
        "connections": trees.conns.len(),
        "connectionsByState": by_state,
        "unreadableConnections": unreadable,
        "sessions": trees.sessions.len(),
        "events": crate::store::embedded::events::count_in(&trees.events),
        "deliveries": trees.deliveries.len(),
        "sizeOnDiskBytes": trees.size_on_disk(),
    });
    if args.json {
        return print_report(&format!("{report:#}\n"));
    }
    let mut out = format!("data directory   {}\n", dir.display());
    out += &format!(
        "schema version   {SCHEMA_VERSION} (value format {})\n",
        crate::codec::FORMAT_VERSION
    );
    out += &format!("connections      {}\n", trees.conns.len());
    for (state, n) in &by_state {
        out += &format!("  {state:<14} {n}\n");
    }
    out += &format!("  unreadable     {unreadable}\n");
    out += &format!("sessions         {}\n", trees.sessions.len());
    out += &format!(
        "events           {}\n",
        crate::store::embedded::events::count_in(&trees.events)
    );
    out += &format!("deliveries       {}\n", trees.deliveries.len());
    out += &format!("size on disk     {} bytes\n", trees.size_on_disk());
    print_report(&out)
}
