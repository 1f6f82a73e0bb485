//! The generated secrets: `<data_dir>/secrets.toml`, holding `jwt_secret` and
//! `admin_api_key`, mode 0600.
//!
//! tether must work with no configuration at all, yet never run with a guessable secret, so
//! on first start it generates both and keeps them beside the store: a restart (or `tether
//! token`) finds the same values. Values set in the configuration win and are never written
//! here.
//!
//! The file is published with a hard link from a private temporary file rather than a
//! rename: two processes creating it at once (a first `serve` and a `tether token`) cannot
//! overwrite each other, and the loser reads the winner's values, so no token is ever minted
//! with a secret the server does not hold.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;

pub const FILE_NAME: &str = "secrets.toml";

/// Random bytes in a generated secret or key.
const SECRET_BYTES: usize = 32;

pub struct Secrets {
    pub jwt_secret: String,
    pub admin_api_key: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("jwt_secret", &"<hidden>")
            .field("admin_api_key", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write secrets file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("invalid secrets file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// `<data_dir>/secrets.toml`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Random bytes from the OS, base64url; made in `auth::crypto`.
pub use crate::auth::random_token;

/// A new API key; the rules for keys, and this, are in `auth::api_keys`.
pub use crate::auth::new_api_key;

/// Fills `config.jwt_secret` (HS* algorithms only) and `config.admin_api_key` from
/// `secrets` where the configuration left them unset.
pub fn apply(config: &mut Config, secrets: &Secrets) {
    if config.jwt_secret.is_none() && config.jwt_algorithm.is_hmac() {
        config.jwt_secret = Some(secrets.jwt_secret.clone());
    }
    if config.admin_api_key.is_none() {
        config.admin_api_key = Some(secrets.admin_api_key.clone());
    }
}

/// Reads the file without creating anything: `Ok(None)` when it does not exist.
pub fn read(data_dir: &Path) -> Result<Option<Secrets>, SecretsError> {
    let file = path(data_dir);
    match read_partial(&file)? {
        None => Ok(None),
        Some(Partial {
            jwt_secret: Some(jwt_secret),
            admin_api_key: Some(admin_api_key),
        }) => Ok(Some(Secrets {
            jwt_secret,
            admin_api_key,
        })),
        Some(p) => Err(SecretsError::Invalid {
            path: file,
            message: format!("missing {}", p.missing()),
        }),
    }
}

/// Reads `<data_dir>/secrets.toml`, generating whatever it lacks (the whole file on first
/// start) and writing it atomically with mode 0600. Creates `data_dir` if needed. Returns
/// the secrets and whether the file was written.
pub fn load_or_create(data_dir: &Path) -> Result<(Secrets, bool), SecretsError> {
    let file = path(data_dir);
    let write_err = |source| SecretsError::Write {
        path: file.clone(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(write_err)?;
    // Two rounds: if another process publishes the file between our read and our write,
    // the second round reads theirs.
    for _ in 0..2 {
        let existing = read_partial(&file)?;
        if let Some(Partial {
            jwt_secret: Some(jwt_secret),
            admin_api_key: Some(admin_api_key),
        }) = existing
        {
            let secrets = Secrets {
                jwt_secret,
                admin_api_key,
            };
            return Ok((secrets, false));
        }
        let replace = existing.is_some();
        let partial = existing.unwrap_or_default();
        let secrets = Secrets {
            jwt_secret: partial
                .jwt_secret
                .unwrap_or_else(|| random_token(SECRET_BYTES)),
            admin_api_key: partial.admin_api_key.unwrap_or_else(new_api_key),
        };
        if publish(&file, render(&secrets).as_bytes(), replace).map_err(write_err)? {
            return Ok((secrets, true));
        }
    }
    Err(SecretsError::Invalid {
        path: file,
        message: "the file keeps changing while tether reads it".into(),
    })
}

/// The file's keys, each possibly absent.
#[derive(Default)]
struct Partial {
    jwt_secret: Option<String>,
    admin_api_key: Option<String>,
}

impl Partial {
    fn missing(&self) -> &'static str {
        match (&self.jwt_secret, &self.admin_api_key) {
            (None, None) => "jwt_secret and admin_api_key",
            (None, _) => "jwt_secret",
            _ => "admin_api_key",
        }
    }
}

fn read_partial(file: &Path) -> Result<Option<Partial>, SecretsError> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SecretsError::Read {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    warn_if_shared(file);
    let invalid = |message: String| SecretsError::Invalid {
        path: file.to_path_buf(),
        message,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.message().into()))?;
    let mut partial = Partial::default();
    for (key, value) in table {
        let toml::Value::String(s) = value else {
            return Err(invalid(format!("{key} must be a string")));
        };
        if s.is_empty() {
            return Err(invalid(format!("{key} is empty")));
        }
        match key.as_str() {
            "jwt_secret" => partial.jwt_secret = Some(s),
            "admin_api_key" => {
                if !crate::auth::is_valid_api_key(&s) {
                    return Err(invalid(format!(
                        "admin_api_key: {}",
                        crate::auth::api_key_shape()
                    )));
                }
                partial.admin_api_key = Some(s)
            }
            other => {
                return Err(invalid(format!(
                    "unknown key {other:?} (expected jwt_secret and admin_api_key)"
                )))
            }
        }
    }
    Ok(Some(partial))
}

fn render(secrets: &Secrets) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "# Generated by tether. Keep it private (mode 0600); anyone holding these values can\n\
         # mint tokens and administer the server. jwt_secret and admin_api_key set in the\n\
         # configuration take precedence over these.\n\
         jwt_secret = {}\n\
         admin_api_key = {}\n",
        quote(&secrets.jwt_secret),
        quote(&secrets.admin_api_key)
    )
}

/// Replaces `file` with `contents` so that a crash leaves the old file or the new one,
/// never a part: a private (0600) temporary file beside it, synced, renamed over it, and the
/// directory synced. For every file tether writes into a data directory.
pub fn replace_file(file: &Path, contents: &[u8]) -> io::Result<()> {
    publish(file, contents, true).map(|_| ())
}

/// Writes `contents` to a private temporary file beside `file`, then publishes it: by rename
/// when `replace`, else by hard link, which fails if `file` appeared meanwhile. Returns
/// whether our contents were published.
fn publish(file: &Path, contents: &[u8], replace: bool) -> io::Result<bool> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map_or_else(|| FILE_NAME.into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        random_token(6)
    ));
    let result = write_private(&tmp, contents).and_then(|()| {
        if replace {
            fs::rename(&tmp, file).map(|()| true)
        } else {
            match fs::hard_link(&tmp, file) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                // Filesystems without hard links: fall back to a rename (it may overwrite a
                // file created in the same instant, which is the only thing lost).
                Err(_) => fs::rename(&tmp, file).map(|()| true),
            }
        }
    });
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        sync_dir(dir);
    }
    result
}

fn write_private(tmp: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(tmp)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Makes the rename/link itself durable. Best effort: not every platform can open a
/// directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(unix)]
fn warn_if_shared(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(file) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %file.display(),
                mode = format!("{mode:o}"),
                "secrets file is readable by other users; run chmod 600 on it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_file: &Path) {}

#[cfg(test)]
mod tests {

    /// The API-key rule of the config and the authenticator holds for the secrets file too.
    #[test]
    fn the_secrets_file_holds_to_the_one_api_key_rule() {
        let secret = "0123456789abcdef0123456789abcdef";
        let dir = tempfile::tempdir().unwrap();
        for (key, ok) in [
            ("tk_0123456789abcdef", false),
            ("tk_0123456789abcdefg", true),
        ] {
            std::fs::write(
                path(dir.path()),
                format!("jwt_secret = \"{secret}\"\nadmin_api_key = \"{key}\"\n"),
            )
            .unwrap();
            assert_eq!(read(dir.path()).is_ok_and(|s| s.is_some()), ok, "{key}");
        }
    }

    use super::*;
    use crate::config::JwtAlgorithm;

    #[test]
    fn random_tokens_are_base64url_and_distinct() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, random_token(32));
        let key = new_api_key();
        assert!(key.starts_with("tk_") && key.len() == 46);
    }

    #[test]
    fn creates_a_private_file_then_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        assert!(read(&data_dir).unwrap().is_none());

        let (first, created) = load_or_create(&data_dir).unwrap();
        assert!(created);
        assert_eq!(first.jwt_secret.len(), 43);
        assert!(first.admin_api_key.starts_with("tk_"));
        assert_eq!(first.admin_api_key.len(), 46);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path(&data_dir)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(&data_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");

        let (second, created) = load_or_create(&data_dir).unwrap();
        assert!(!created);
        assert_eq!(second.jwt_secret, first.jwt_secret);
        assert_eq!(second.admin_api_key, first.admin_api_key);
        let third = read(&data_dir).unwrap().unwrap();
        assert_eq!(third.jwt_secret, first.jwt_secret);
    }

    #[test]
    fn completes_a_file_missing_a_key_and_keeps_the_other() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), "jwt_secret = \"mine\"\n").unwrap();
        assert!(read(dir.path()).is_err());
        let (s, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(s.jwt_secret, "mine");
        assert!(s.admin_api_key.starts_with("tk_"));
        assert_eq!(read(dir.path()).unwrap().unwrap().jwt_secret, "mine");
    }

    #[test]
    fn rejects_a_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            path(dir.path()),
            "jwt_secret = \"x\"\nadmin_api_key = \"nope\"\n",
        )
        .unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("admin_api_key") && e.contains("secrets.toml"),
            "{e}"
        );
        fs::write(path(dir.path()), "jwt_secret = \"x\"\nother = \"y\"\n").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("\"other\""), "{e}");
    }

    #[test]
    fn config_values_win() {
        let dir = tempfile::tempdir().unwrap();
        let (secrets, _) = load_or_create(dir.path()).unwrap();

        let mut config = Config {
            jwt_secret: Some("from-config".into()),
            admin_api_key: Some("tk_fromconfig_0123456789".into()),
            ..Config::default()
        };
        apply(&mut config, &secrets);
        assert_eq!(config.jwt_secret.as_deref(), Some("from-config"));
        assert_eq!(
            config.admin_api_key.as_deref(),
            Some("tk_fromconfig_0123456789")
        );
        // ...and are not written to the file.
        let on_disk = fs::read_to_string(path(dir.path())).unwrap();
        assert!(!on_disk.contains("from-config") && !on_disk.contains("tk_fromconfig"));

        let mut config = Config::default();
        apply(&mut config, &secrets);
        assert_eq!(
            config.jwt_secret.as_deref(),
            Some(secrets.jwt_secret.as_str())
        );
        assert_eq!(
            config.admin_api_key.as_deref(),
            Some(secrets.admin_api_key.as_str())
        );

        // Public-key algorithms take no shared secret.
        let mut config = Config {
            jwt_algorithm: JwtAlgorithm::ES256,
            ..Config::default()
        };
        apply(&mut config, &secrets);
        assert_eq!(config.jwt_secret, None);
        assert!(config.admin_api_key.is_some());
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let results: Vec<Secrets> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(dir.path()).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = read(dir.path()).unwrap().unwrap();
        for s in results {
            assert_eq!(s.jwt_secret, on_disk.jwt_secret);
            assert_eq!(s.admin_api_key, on_disk.admin_api_key);
        }
    }
}
