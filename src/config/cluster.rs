//! The keys of cluster mode (SPEC §10): several nodes over one Redis, switched on by
//! `redis_url`. Their rules, and the node id a node gets when none is configured.
//!
//! Cluster mode generates no secrets: every node must verify the same tokens and accept
//! the same admin key, and a secret generated on one node would be known to that node
//! only. So with `redis_url` set, `jwt_secret` (or `jwt_public_key_file`) and
//! `admin_api_key` must be configured, and a node without them refuses to start.

use super::{Config, ConfigError, Report};

/// Longest node id: a host name of any sensible length plus its suffix.
const NODE_ID_MAX: usize = 128;

impl Config {
    /// True when `redis_url` is set: the node is one of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.redis_url.is_some()
    }

    /// The configured `node_id`, or a new one (host name plus a random suffix), which is
    /// kept so every later call returns the same. A config is loaded at every start, so an
    /// unconfigured node gets a new id each time it starts.
    pub fn resolve_node_id(&mut self) -> &str {
        self.node_id.get_or_insert_with(generated_node_id)
    }

    pub(super) fn check_cluster(&self, report: &mut Report) {
        if let Some(url) = &self.redis_url {
            if let Err(why) = check_redis_url(url) {
                report.push(super::keys::key("redis_url").unwrap().invalid(url, why));
            }
        }
        if let Err(why) = check_redis_prefix(&self.redis_prefix) {
            report.push(invalid("redis_prefix", &self.redis_prefix, why));
        }
        if let Some(id) = &self.node_id {
            if !is_node_id(id) {
                report.push(invalid(
                    "node_id",
                    id,
                    format!(
                        "expected 1 to {NODE_ID_MAX} letters, digits, '.', '_' or '-'; leave it \
                         out for the host name plus a random suffix"
                    ),
                ));
            }
        }
        if !report.failed_any(&["node_heartbeat_ms", "node_lease_ms"])
            && self.node_lease_ms <= self.node_heartbeat_ms.saturating_mul(2)
        {
            report.push(invalid(
                "node_lease_ms",
                &self.node_lease_ms.to_string(),
                format!(
                    "expected more than twice node_heartbeat_ms ({}), so that one late renewal \
                     does not make a live node dead: at least {}",
                    self.node_heartbeat_ms,
                    self.node_heartbeat_ms.saturating_mul(2).saturating_add(1)
                ),
            ));
        }
        if self.is_cluster() && !report.failed("redis_url") {
            self.check_cluster_secrets(report);
        }
    }

    fn check_cluster_secrets(&self, report: &mut Report) {
        const WHY: &str = "cluster mode (redis_url is set) generates no secrets; configure";
        if self.jwt_algorithm.is_hmac() && self.jwt_secret.is_none() {
            report.push(ConfigError::Missing {
                key: "jwt_secret",
                reason: format!(
                    "{WHY} the same jwt_secret on every node, or jwt_algorithm and \
                     jwt_public_key_file"
                ),
            });
        }
        // Without jwt_secret an asymmetric algorithm needs its key file, cluster or not;
        // that rule reports it.
        if self.admin_api_key.is_none() {
            report.push(ConfigError::Missing {
                key: "admin_api_key",
                reason: format!("{WHY} the same admin_api_key on every node"),
            });
        }
    }
}

fn invalid(name: &str, text: &str, expected: impl Into<String>) -> ConfigError {
    super::keys::key(name)
        .expect("a key of the table")
        .invalid(text, expected)
}

const URL_SHAPE: &str = "expected redis://[user:password@]host[:port][/db], the same with \
     rediss:// (TLS), or unix:///path/to/redis.sock";

/// `redis://` and `rediss://` with a host, an optional port and an optional database
/// number; `unix://` with an absolute socket path. A query (`?protocol=resp3`) may follow.
///
/// The user name and password end at the last `@`, wherever it is: a password with an
/// unescaped `/`, `?` or `#` is still a password (and [`super::values::redact_url`] hides it
/// as one), but a Redis client would read it as the start of a path, so it is refused, and
/// no message quotes any of it.
fn check_redis_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or(URL_SHAPE)?;
    match scheme {
        "redis" | "rediss" => {
            let rest = match rest.rsplit_once('@') {
                Some((userinfo, _)) if userinfo.contains(['/', '?', '#']) => {
                    return Err(format!(
                        "{URL_SHAPE}: percent-encode '/', '?' and '#' in the user name and \
                         password (%2F, %3F, %23)"
                    ))
                }
                Some((_, after)) => after,
                None => rest,
            };
            let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
            let (host_port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (host, port) = split_host_port(host_port).ok_or(URL_SHAPE)?;
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{URL_SHAPE}: the host is missing"));
            }
            if let Some(port) = port {
                if !matches!(port.parse::<u16>(), Ok(1..)) {
                    return Err(format!("{URL_SHAPE}: {port:?} is not a port"));
                }
            }
            match path.trim_start_matches('/') {
                "" => Ok(()),
                db if db.parse::<u32>().is_ok() => Ok(()),
                db => Err(format!("{URL_SHAPE}: {db:?} is not a database number")),
            }
        }
        "unix" => match rest.split_once('?').map_or(rest, |(before, _)| before) {
            path if path.starts_with('/') && path.len() > 1 => Ok(()),
            _ => Err(format!("{URL_SHAPE}: the socket path must be absolute")),
        },
        _ => Err(URL_SHAPE.to_string()),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    Some(match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    })
}

/// Keys and channels are `<prefix>:...`, and Redis Cluster hash tags are `{...}`, so the
/// prefix may hold neither braces nor anything that splits a command line.
fn check_redis_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("expected a non-empty prefix, like \"tether\"".into());
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err("expected no whitespace, '{' or '}' (braces are Redis hash tags)".into());
    }
    Ok(())
}

fn is_node_id(id: &str) -> bool {
    (1..=NODE_ID_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The host name, its characters made valid for a node id, plus `-` and 8 random
/// characters: two nodes on one host, or one node restarted, get different ids.
fn generated_node_id() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(NODE_ID_MAX - 9)
        .collect();
    let host = if host.is_empty() {
        "tether".into()
    } else {
        host
    };
    format!("{host}-{}", crate::auth::random_token(6))
}

/// The kernel's host name where it can be read without a system call the standard library
/// does not offer; then `$HOSTNAME`.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err_toml, load_toml};

    #[test]
    fn redis_urls() {
        for good in [
            "redis://localhost",
            "redis://127.0.0.1:6379",
            "redis://:secret@redis.internal:6380/2",
            "redis://user:secret@[::1]:6379/0",
            "rediss://cache.example.com/",
            "redis://h?protocol=resp3",
            "unix:///run/redis/redis.sock",
        ] {
            assert_eq!(check_redis_url(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost:6379",
            "http://localhost",
            "redis://",
            "redis://:pw@",
            "redis://h:0",
            "redis://h:port",
            "redis://h/db",
            "redis://[::1",
            "unix://relative.sock",
            "unix://",
        ] {
            assert!(check_redis_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_with_a_slash_is_never_shown() {
        // Generated passwords hold '/', '?' and '#'; unescaped, they end the authority, yet
        // they are still the password and must not reach a message or a log line.
        for (url, password) in [
            ("redis://:abc/def+ghi@cache:6379/0", "abc/def+ghi"),
            ("redis://app:s3cr?et@cache", "s3cr?et"),
            ("rediss://app:pa#ss/wd@cache", "pa#ss/wd"),
            (
                "2:redis://x/y:an-operator-password@cache",
                "an-operator-password",
            ),
        ] {
            let e = err_toml(&format!("redis_url = {url:?}"));
            assert!(e.contains("redis_url"), "{e}");
            for part in [password, &password[..3]] {
                assert!(!e.contains(part), "{part:?} shown: {e}");
            }
            let c = Config {
                redis_url: Some(url.to_string()),
                ..Config::default()
            };
            assert!(!format!("{c:?}").contains(password), "{c:?}");
        }
        let e = err_toml("redis_url = \"redis://:abc/def@cache\"");
        assert!(e.contains("percent-encode"), "{e}");
        assert_eq!(check_redis_url("redis://:abc%2Fdef@cache/1"), Ok(()));
    }

    #[test]
    fn generated_node_ids_are_valid_and_new_each_time() {
        let a = generated_node_id();
        let b = generated_node_id();
        assert!(is_node_id(&a), "{a}");
        assert_ne!(a, b);
        let mut config = Config::default();
        let first = config.resolve_node_id().to_string();
        assert_eq!(config.resolve_node_id(), first, "kept once made");
        assert!(!is_node_id("two words") && !is_node_id("") && !is_node_id("a{b}"));
        assert!(check_redis_prefix("app:tether").is_ok());
        assert!(check_redis_prefix("{tether}").is_err() && check_redis_prefix("a b").is_err());
    }

    #[test]
    fn cluster_keys_are_validated_like_the_others() {
        let c = Config::default();
        assert_eq!(c.redis_url, None);
        assert_eq!(c.redis_prefix, "tether");
        assert_eq!(c.node_id, None);
        assert_eq!((c.node_heartbeat_ms, c.node_lease_ms), (1000, 5000));
        assert!(!c.is_cluster());

        let e = load_toml(
            "redis_url = \"http://user:hunter2@cache\"\nredis_prefix = \"{tether}\"\n\
             node_id = \"node 1\"\nnode_heartbeat_ms = 10\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.errors().iter().filter_map(ConfigError::key).collect();
        assert_eq!(
            keys,
            ["node_heartbeat_ms", "redis_url", "redis_prefix", "node_id"]
        );
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "password shown: {text}");
        assert!(text.contains("\"http://user:<hidden>@cache\""), "{text}");

        let e = err_toml("node_heartbeat_ms = 2000\nnode_lease_ms = 4000");
        assert_eq!(
            e,
            "invalid value for node_lease_ms: \"4000\" (expected more than twice \
             node_heartbeat_ms (2000), so that one late renewal does not make a live node dead: \
             at least 4001)"
        );
        let c = load_toml("node_heartbeat_ms = 2000\nnode_lease_ms = 4001\nnode_id = \"a.b-c_1\"")
            .unwrap();
        assert_eq!(c.node_id.as_deref(), Some("a.b-c_1"));
        // Secrets and passwords stay out of Debug.
        let c = load_toml(
            "redis_url = \"redis://:hunter2@cache:6379/1\"\n\
             jwt_secret = \"0123456789abcdef0123456789abcdef\"\n\
             admin_api_key = \"tk_0123456789abcdefghij\"",
        )
        .unwrap();
        assert!(c.is_cluster());
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn cluster_mode_needs_its_secrets_configured() {
        let e = load_toml("redis_url = \"redis://cache\"").unwrap_err();
        let keys: Vec<&str> = e.errors().iter().filter_map(ConfigError::key).collect();
        assert_eq!(keys, ["jwt_secret", "admin_api_key"], "{e}");
        assert!(e.to_string().contains("generates no secrets"), "{e}");

        let key_file = tempfile::NamedTempFile::new().unwrap();
        let e = load_toml(&format!(
            "redis_url = \"redis://cache\"\njwt_algorithm = \"ES256\"\njwt_public_key_file = {:?}",
            key_file.path()
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("admin_api_key"), "{e}");
        let e = load_toml("redis_url = \"redis://cache\"\njwt_algorithm = \"EdDSA\"").unwrap_err();
        let keys: Vec<&str> = e.errors().iter().filter_map(ConfigError::key).collect();
        assert_eq!(keys, ["jwt_public_key_file", "admin_api_key"], "{e}");
    }
}
