use super::*;
use clap::{CommandFactory, Parser};
use std::io::Write;
use std::path::Path;

#[derive(Parser, Debug)]
pub(super) struct TestCli {
    #[command(flatten)]
    pub(super) args: ConfigArgs,
}

pub(super) fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

pub(super) fn load_toml(text: &str) -> Result<Config, ConfigError> {
    let f = toml_file(text);
    Config::load(Some(f.path()), &ConfigArgs::default())
}

pub(super) fn err_toml(text: &str) -> String {
    load_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_spec_table() {
    let c = Config::default();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.jwt_secret, None);
    assert_eq!(c.jwt_algorithm, JwtAlgorithm::HS256);
    assert_eq!(c.jwt_public_key_file, None);
    assert_eq!(c.jwt_issuer, None);
    assert_eq!(c.jwt_audience, None);
    assert_eq!(c.jwt_leeway_seconds, 30);
    assert_eq!(c.admin_api_key, None);
    assert!(c.api_keys.is_empty());
    assert_eq!(c.max_per_user, 10);
    assert_eq!(c.max_total, 100_000);
    assert_eq!(c.ttl_seconds, 3600);
    assert_eq!(c.messages_per_minute, 120);
    assert_eq!(c.max_message_bytes, 65_536);
    assert_eq!(c.auth_timeout_ms, 10_000);
    assert_eq!(c.heartbeat_interval_ms, 25_000);
    assert_eq!(c.resume_grace_seconds, 120);
    assert_eq!(c.replay_buffer_messages, 256);
    assert_eq!(c.outbound_queue_bytes, 1_048_576);
    assert_eq!(c.max_body_bytes, 1_048_576);
    assert_eq!(c.session_ttl_seconds, 86_400);
    assert_eq!(c.session_cookie, "tether_sid");
    assert_eq!(c.event_log_max, 100_000);
    assert_eq!(c.durability, Durability::Batched);
    assert_eq!(c.flush_interval_ms, None);
    assert_eq!(c.cache_capacity_bytes, 67_108_864);
    assert!(!c.trust_proxy);
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.log_level, None);
    assert!(!c.metrics_require_key);
    c.validate().unwrap();
    // No file and no overrides is the default.
    let loaded = Config::load(None, &ConfigArgs::default()).unwrap();
    assert_eq!(format!("{loaded:?}"), format!("{c:?}"));
}

#[test]
fn flush_interval_defaults_per_mode() {
    let mut c = Config::default();
    assert_eq!(c.flush_interval(), Duration::from_millis(5));
    c.durability = Durability::Sync;
    assert_eq!(c.flush_interval(), Duration::from_millis(5));
    c.durability = Durability::Relaxed;
    assert_eq!(c.flush_interval(), Duration::from_millis(500));
    c.flush_interval_ms = Some(42);
    assert_eq!(c.flush_interval(), Duration::from_millis(42));
}

#[test]
fn every_key_has_a_flag_and_env_var_named_after_it() {
    TestCli::command().debug_assert();
    let cmd = TestCli::command();
    let mut seen = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let key = long.replace('-', "_");
        let env = arg.get_env().expect("every flag has an env var");
        assert_eq!(
            env.to_str().unwrap(),
            format!("TETHER_{}", key.to_uppercase())
        );
        assert!(arg.get_help().is_some(), "--{long} has no help");
        if key != "config" {
            assert!(KEYS.iter().any(|k| k.name == key), "--{long} is not a key");
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.contains("[default: "),
                "--{long} help lacks its default"
            );
            seen.push(key);
        }
    }
    seen.sort();
    let mut keys: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
    keys.sort();
    assert_eq!(seen, keys);
}

#[test]
fn toml_file_overrides_every_default() {
    let key_file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        r#"
listen = "0.0.0.0:9000"
data_dir = "/var/lib/tether"
jwt_secret = "file-secret"
jwt_algorithm = "RS256"
jwt_public_key_file = {key_file:?}
jwt_issuer = "https://issuer"
jwt_audience = "tether"
jwt_leeway_seconds = 5
admin_api_key = "tk_0123456789abcdefghij"
max_per_user = 3
max_total = 50
ttl_seconds = 60
messages_per_minute = 30
max_message_bytes = 1024
auth_timeout_ms = 500
heartbeat_interval_ms = 1000
resume_grace_seconds = 0
replay_buffer_messages = 16
outbound_queue_bytes = 4096
max_body_bytes = 2048
session_ttl_seconds = 600
session_cookie = "sid"
event_log_max = 10
durability = "relaxed"
flush_interval_ms = 100
cache_capacity_bytes = 1_000_000
trust_proxy = true
log_format = "json"
log_level = "debug"
metrics_require_key = true

[[api_keys]]
key = "tk_aaaaaaaaaaaaaaaaaaaa"
name = "app"
permissions = ["read", "sessions"]
"#,
        key_file = key_file.path()
    );
    let c = load_toml(&text).unwrap();
    assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/tether"));
    assert_eq!(c.jwt_secret.as_deref(), Some("file-secret"));
    assert_eq!(c.jwt_algorithm, JwtAlgorithm::RS256);
    assert_eq!(c.jwt_public_key_file.as_deref(), Some(key_file.path()));
    assert_eq!(c.jwt_issuer.as_deref(), Some("https://issuer"));
    assert_eq!(c.jwt_audience.as_deref(), Some("tether"));
    assert_eq!(c.jwt_leeway_seconds, 5);
    assert_eq!(c.admin_api_key.as_deref(), Some("tk_0123456789abcdefghij"));
    assert_eq!(
        c.api_keys,
        vec![ApiKeyConfig {
            key: "tk_aaaaaaaaaaaaaaaaaaaa".into(),
            name: "app".into(),
            permissions: vec!["read".into(), "sessions".into()],
        }]
    );
    assert_eq!(c.max_per_user, 3);
    assert_eq!(c.max_total, 50);
    assert_eq!(c.ttl_seconds, 60);
    assert_eq!(c.messages_per_minute, 30);
    assert_eq!(c.max_message_bytes, 1024);
    assert_eq!(c.auth_timeout_ms, 500);
    assert_eq!(c.heartbeat_interval_ms, 1000);
    assert_eq!(c.resume_grace_seconds, 0);
    assert_eq!(c.replay_buffer_messages, 16);
    assert_eq!(c.outbound_queue_bytes, 4096);
    assert_eq!(c.max_body_bytes, 2048);
    assert_eq!(c.session_ttl_seconds, 600);
    assert_eq!(c.session_cookie, "sid");
    assert_eq!(c.event_log_max, 10);
    assert_eq!(c.durability, Durability::Relaxed);
    assert_eq!(c.flush_interval_ms, Some(100));
    assert_eq!(c.cache_capacity_bytes, 1_000_000);
    assert!(c.trust_proxy);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert!(c.metrics_require_key);
    // Secrets never show in Debug.
    let debug = format!("{c:?}");
    assert!(!debug.contains("file-secret") && !debug.contains("tk_0123"));
    assert!(!debug.contains("tk_aaaa"));
}

/// The only test that touches the process environment; it uses keys no other test
/// reads through clap, so tests running in parallel do not see each other.
#[test]
fn layers_file_then_env_then_flags() {
    let file = toml_file("max_total = 11\nttl_seconds = 12\nevent_log_max = 13\n");
    std::env::set_var("TETHER_TTL_SECONDS", "22");
    std::env::set_var("TETHER_EVENT_LOG_MAX", "23");
    std::env::set_var("TETHER_SESSION_COOKIE", "");
    std::env::set_var("TETHER_CONFIG", file.path());
    let cli = TestCli::try_parse_from(["tether", "--event-log-max", "33"]).unwrap();
    let from_env = ConfigArgs::from_env().unwrap();
    for var in [
        "TETHER_TTL_SECONDS",
        "TETHER_EVENT_LOG_MAX",
        "TETHER_SESSION_COOKIE",
        "TETHER_CONFIG",
    ] {
        std::env::remove_var(var);
    }

    assert_eq!(cli.args.config.as_deref(), Some(file.path()));
    let c = Config::from_args(&cli.args).unwrap();
    assert_eq!(c.max_total, 11, "file over default");
    assert_eq!(c.ttl_seconds, 22, "env over file");
    assert_eq!(c.event_log_max, 33, "flag over env");
    assert_eq!(c.session_cookie, "tether_sid", "empty env var is unset");
    assert_eq!(c.max_per_user, 10, "default stays");

    assert_eq!(from_env.get("ttl_seconds"), Some("22".as_ref()));
    assert_eq!(from_env.get("event_log_max"), Some("23".as_ref()));

    // Without the file, env still applies.
    let c = Config::load(None, &from_env).unwrap();
    assert_eq!((c.max_total, c.ttl_seconds), (100_000, 22));
}

#[test]
fn flags_parse_and_bool_flags_take_an_optional_value() {
    let cli = TestCli::try_parse_from([
        "tether",
        "--trust-proxy",
        "--metrics-require-key=false",
        "--durability",
        "SYNC",
        "--jwt-algorithm",
        "hs512",
        "--listen",
        "localhost:9999",
        "--api-keys",
        r#"[{key = "tk_bbbbbbbbbbbbbbbbbbbb", name = "ci", permissions = ["read"]}]"#,
    ])
    .unwrap();
    let c = Config::load(None, &cli.args).unwrap();
    assert!(c.trust_proxy);
    assert!(!c.metrics_require_key);
    assert_eq!(c.durability, Durability::Sync);
    assert_eq!(c.jwt_algorithm, JwtAlgorithm::HS512);
    assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.api_keys.len(), 1);
    assert_eq!(c.api_keys[0].name, "ci");
}

#[test]
fn invalid_values_name_the_key_and_the_value() {
    assert_eq!(
        err_toml("max_per_user = 0"),
        "invalid value for max_per_user: \"0\" (expected a whole number >= 1)"
    );
    let args = ConfigArgs::default().with("max_per_user", "abc");
    assert_eq!(
        Config::load(None, &args).unwrap_err().to_string(),
        "invalid value for max_per_user: \"abc\" (expected a whole number >= 1)"
    );
    assert_eq!(
        err_toml("max_per_user = -3"),
        "invalid value for max_per_user: \"-3\" (expected a whole number >= 1)"
    );
    let e = err_toml("durability = \"fast\"");
    assert!(e.contains("durability") && e.contains("\"fast\""), "{e}");
    let e = err_toml("listen = \"nowhere:80\"");
    assert!(e.contains("listen") && e.contains("\"nowhere:80\""), "{e}");
    let e = err_toml("listen = 8080");
    assert!(e.contains("listen") && e.contains("\"8080\""), "{e}");
    let e = err_toml("heartbeat_interval_ms = 5");
    assert!(
        e.contains("heartbeat_interval_ms") && e.contains("\"5\""),
        "{e}"
    );
    let e = err_toml("max_message_bytes = 100");
    assert!(
        e.contains("max_message_bytes") && e.contains(">= 256"),
        "{e}"
    );
    let e = err_toml("trust_proxy = \"maybe\"");
    assert!(e.contains("trust_proxy") && e.contains("\"maybe\""), "{e}");
    let e = err_toml("ttl_seconds = 99999999999999");
    assert!(e.contains("ttl_seconds") && e.contains("from 1 to"), "{e}");
    let e = err_toml("session_cookie = \"a b\"");
    assert!(e.contains("session_cookie") && e.contains("\"a b\""), "{e}");
    let e = err_toml("log_level = \"info,[[[\"");
    assert!(e.contains("log_level"), "{e}");
    let e = err_toml("jwt_algorithm = \"none\"");
    assert!(e.contains("jwt_algorithm") && e.contains("\"none\""), "{e}");
}

#[test]
fn unknown_key_and_unreadable_file() {
    let e = err_toml("max_per_users = 3");
    assert!(e.contains("unknown key \"max_per_users\""), "{e}");
    assert!(e.contains("did you mean \"max_per_user\""), "{e}");
    let e = err_toml("[server]\nlisten = \"127.0.0.1:1\"");
    assert!(e.contains("unknown key \"server\""), "{e}");

    let missing = Path::new("/nonexistent/tether.toml");
    let e = Config::load(Some(missing), &ConfigArgs::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/tether.toml"), "{e}");

    let e = err_toml("max_per_user = ");
    assert!(e.starts_with("cannot parse config file"), "{e}");
}

#[test]
fn text_loads_as_the_file_holding_it_does() {
    let text = "max_per_user = 3\nmax_per_users = 4\nlisten = \"nowhere\"";
    let f = toml_file(text);
    let from_file = Config::load(Some(f.path()), &ConfigArgs::default()).unwrap_err();
    let from_text = Config::load_text(text, f.path(), &ConfigArgs::default()).unwrap_err();
    assert_eq!(from_file.to_string(), from_text.to_string());
    let c = Config::load_text(
        "max_per_user = 3",
        Path::new("t.toml"),
        &ConfigArgs::default(),
    )
    .unwrap();
    assert_eq!(c.max_per_user, 3);
    let e = Config::load_text("=", Path::new("t.toml"), &ConfigArgs::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot parse config file t.toml"),
        "{e}"
    );
}

#[test]
fn a_log_filter_matches_field_values_as_text() {
    // As a regular expression `.*a` and 32 `.` (`.*a.{32}`, which a directive cannot
    // spell: its `}` would end the field) is a DFA of billions of states (a 350-byte
    // log_level asked for more than 2 GiB). A field value is matched as text.
    let value = format!(".*a{}", ".".repeat(32));
    let c = load_toml(&format!(
        r#"log_level = "info,tether[{{path={value}}}]=debug""#
    ))
    .unwrap();
    assert!(c.log_level.unwrap().contains(&value));
    assert!(log_filter("warn,tether=debug,hyper[{path=/x}]=trace").is_ok());
    let e = err_toml(r#"log_level = "info,[[[""#);
    assert!(e.contains("log_level"), "{e}");
}

#[test]
fn a_log_filter_may_name_one_field_value_twice() {
    // Two directives for one text-matched field value panicked in a debug build
    // (tracing-subscriber's "Ordering::Equal must imply a.fields == b.fields"); the last
    // one is the one that applies, as it is for any other directive.
    let text = "info,tether[{path=/x}]=debug,hyper,tether[{path=/x}]=trace,tether[{path=/y}]=warn";
    let c = load_toml(&format!("log_level = \"{text}\"")).unwrap();
    assert_eq!(c.log_level.as_deref(), Some(text));
    let shown = log_filter(text).unwrap().to_string();
    assert!(shown.contains("tether[{path=/x}]=trace"), "{shown}");
    assert!(!shown.contains("tether[{path=/x}]=debug"), "{shown}");
    assert!(shown.contains("tether[{path=/y}]=warn"), "{shown}");
    assert!(
        shown.contains("hyper=trace") && shown.contains("info"),
        "{shown}"
    );
    let twice = "warn,a[s{f=v}]=info,a[s{f=v}]=error,a[s{f=v}]=off";
    let shown = log_filter(twice).unwrap().to_string();
    assert_eq!(shown.matches("a[s{f=v}]").count(), 1, "{shown}");
    assert!(shown.contains("a[s{f=v}]=off"), "{shown}");
    // A bad directive is refused as before, duplicated or not.
    assert!(log_filter("info,t[{f=v}]=debug,t[{f=v}]=nope").is_err());
    assert!(log_filter("").is_ok() && log_filter(",,").is_ok());
}

#[test]
fn asymmetric_algorithms_need_a_public_key_file() {
    let e = err_toml("jwt_algorithm = \"RS256\"");
    assert_eq!(
        e,
        "missing value for jwt_public_key_file (a PEM public key file is required when \
         jwt_algorithm is RS256)"
    );
    let e = err_toml("jwt_algorithm = \"EdDSA\"\njwt_public_key_file = \"/nonexistent.pem\"");
    assert!(
        e.contains("jwt_public_key_file") && e.contains("/nonexistent.pem"),
        "{e}"
    );
    let e = err_toml("jwt_public_key_file = \"/nonexistent.pem\"");
    assert!(e.contains("only used with"), "{e}");
}

#[test]
fn api_key_rules() {
    let e = err_toml("[[api_keys]]\nkey = \"short\"\nname = \"a\"\npermissions = []");
    assert!(e.contains("api_keys[0].key"), "{e}");
    assert!(!e.contains("short"), "secret echoed: {e}");
    let e = err_toml(
        "[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\npermissions = []\n\
         [[api_keys]]\nkey = \"tk_bbbbbbbbbbbbbbbbbbbb\"\nname = \"a\"\npermissions = []",
    );
    assert!(
        e.contains("api_keys[1].name") && e.contains("unique"),
        "{e}"
    );
    let e = err_toml(
        "[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\npermissions = [\"root\"]",
    );
    assert!(
        e.contains("api_keys[0].permissions") && e.contains("\"root\""),
        "{e}"
    );
    let e = err_toml("[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\nperms = []");
    assert!(e.contains("api_keys") && e.contains("perms"), "{e}");
    let e = err_toml("admin_api_key = \"secret\"");
    assert!(
        e.contains("admin_api_key") && !e.contains("secret\""),
        "{e}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let f = toml_file("max_per_user = 0\ndurability = \"fast\"\nmax_per_users = 1\n");
    let args = ConfigArgs::default()
        .with("ttl_seconds", "0")
        .with("listen", "nowhere");
    let e = Config::load(Some(f.path()), &args).unwrap_err();
    let keys: Vec<&str> = e.errors().iter().filter_map(ConfigError::key).collect();
    // The file's keys (in its table's order), then the environment and flags.
    assert_eq!(
        keys,
        [
            "durability",
            "max_per_user",
            "max_per_users",
            "listen",
            "ttl_seconds"
        ]
    );
    let text = e.to_string();
    assert!(text.starts_with("5 configuration errors:\n  "), "{text}");
    for value in ["\"fast\"", "\"0\"", "\"nowhere\""] {
        assert!(text.contains(value), "{text}");
    }
    assert_eq!(text.lines().count(), 6, "{text}");

    // One error is reported as itself, not as a list of one.
    let e = err_toml("max_per_user = 0");
    assert!(e.starts_with("invalid value for max_per_user"), "{e}");
}

#[test]
fn a_rule_about_a_key_that_failed_to_parse_is_skipped() {
    // jwt_algorithm stays HS256 after its error; "the key file is only used with RS256"
    // would be about that leftover default, not about what was written.
    let e = Config::load(
        None,
        &ConfigArgs::default()
            .with("jwt_algorithm", "RS257")
            .with("jwt_public_key_file", "/nonexistent.pem"),
    )
    .unwrap_err();
    assert_eq!(e.errors().len(), 1, "{e}");
    assert_eq!(e.key(), Some("jwt_algorithm"));

    // A code-built config reports every broken rule too.
    let c = Config {
        max_per_user: 0,
        session_cookie: "a b".into(),
        ..Config::default()
    };
    let e = c.validate().unwrap_err();
    let keys: Vec<&str> = e.errors().iter().filter_map(ConfigError::key).collect();
    assert_eq!(keys, ["max_per_user", "session_cookie"]);
}

#[test]
fn a_boolean_takes_exactly_the_words_its_message_lists() {
    let e = err_toml("trust_proxy = \"maybe\"");
    assert_eq!(
        e,
        "invalid value for trust_proxy: \"maybe\" (expected true/false, yes/no, on/off or 1/0 \
         (any letter case))"
    );
    for (word, value) in [
        ("true", true),
        ("yes", true),
        ("on", true),
        ("1", true),
        ("false", false),
        ("no", false),
        ("off", false),
        ("0", false),
        ("TRUE", true),
        ("Off", false),
        (" yes ", true),
    ] {
        let args = ConfigArgs::default().with("trust_proxy", word);
        let c = Config::load(None, &args).unwrap();
        assert_eq!(c.trust_proxy, value, "{word:?}");
    }
    for word in ["y", "n", "t", "enabled", "2", "truee"] {
        let args = ConfigArgs::default().with("trust_proxy", word);
        assert!(Config::load(None, &args).is_err(), "{word:?} was accepted");
    }
    // TOML booleans are the same words.
    assert!(load_toml("trust_proxy = true").unwrap().trust_proxy);
    assert!(
        !load_toml("metrics_require_key = false")
            .unwrap()
            .metrics_require_key
    );
}

#[test]
fn a_short_hmac_secret_is_refused() {
    let e = err_toml("jwt_secret = \"0123456789abcdef0123456789abcde\"");
    assert!(e.starts_with("invalid value for jwt_secret: "), "{e}");
    assert!(e.contains("at least 32 bytes for HS256"), "{e}");
    assert!(!e.contains("0123456789"), "secret echoed: {e}");
    let e = err_toml("jwt_secret = \"x\"\njwt_algorithm = \"HS512\"");
    assert!(e.contains("at least 32 bytes for HS512"), "{e}");
    let c = load_toml("jwt_secret = \"0123456789abcdef0123456789abcdef\"").unwrap();
    assert_eq!(c.jwt_secret.map(|s| s.len()), Some(32));
}

#[test]
fn leeway_is_bounded_where_the_authenticator_bounds_it() {
    let e = err_toml("jwt_leeway_seconds = 86401");
    assert_eq!(
        e,
        "invalid value for jwt_leeway_seconds: \"86401\" (expected a whole number from 0 to 86400)"
    );
    assert_eq!(
        load_toml("jwt_leeway_seconds = 86400")
            .unwrap()
            .jwt_leeway_seconds,
        crate::auth::MAX_LEEWAY_SECONDS
    );
}

#[test]
fn one_api_key_rule_for_config_authenticator_and_secrets_file() {
    let short = "tk_0123456789abcdef"; // 19 characters
    let long = "tk_0123456789abcdefg"; // 20
    let secret = "0123456789abcdef0123456789abcdef";
    let config = |admin: &str| Config {
        jwt_secret: Some(secret.into()),
        admin_api_key: Some(admin.into()),
        ..Config::default()
    };

    let e = config(short).validate().unwrap_err().to_string();
    assert!(
        e.contains("admin_api_key") && e.contains("at least 17 more"),
        "{e}"
    );
    let e = crate::auth::Authenticator::new(config(short).auth_settings()).unwrap_err();
    assert!(e.to_string().contains("admin_api_key"), "{e}");
    config(long).validate().unwrap();
    crate::auth::Authenticator::new(config(long).auth_settings()).unwrap();
    // The secrets file holds to the same rule: see `secrets::tests`.

    // A configured key may not take the admin key's name or the admin key itself, which
    // the authenticator refused only at start-up before.
    let e = err_toml(&format!(
        "admin_api_key = \"{long}\"\n[[api_keys]]\nkey = \"{long}\"\nname = \"admin\"\n\
         permissions = [\"read\"]"
    ));
    assert!(e.contains("api_keys[0].key") && e.contains("twice"), "{e}");
    assert!(
        e.contains("api_keys[0].name") && e.contains("admin_api_key's"),
        "{e}"
    );
    assert!(!e.contains(long), "secret echoed: {e}");
}
