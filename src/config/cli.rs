//! The command-line side: one flag and one environment variable per key, built from the
//! table in `keys.rs`, and the arguments of the subcommands that are not `serve`.
//!
//! clap resolves the last two layers itself (each flag carries its `TETHER_...` variable),
//! so [`ConfigArgs`] holds "what the environment and the command line said", as text;
//! [`super::Config::load`] lays it over the file. Keeping the text rather than typed values
//! is deliberate: a value from the file, the environment or a flag is then parsed by the same
//! code and a bad one gets the same message, naming the key and the value, whichever layer
//! it came from.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::keys::{key, KEYS};
use super::values::{Hidden, Key, Show};

/// The flag naming the configuration file; not a key (a file cannot name itself).
const CONFIG_FLAG: &str = "config";
/// Its environment variable.
pub const CONFIG_ENV: &str = "TETHER_CONFIG";

/// Configuration from the environment and the command line: the config file, and the text
/// of each key that was given. An empty variable or flag counts as not given.
#[derive(Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (`--config`, `TETHER_CONFIG`).
    pub config: Option<PathBuf>,
    values: BTreeMap<&'static str, OsString>,
}

impl ConfigArgs {
    /// The `TETHER_*` environment alone, resolved by the same definitions as the flags.
    /// For subcommands that take only a few flags but should honour the whole environment.
    pub fn from_env() -> Result<ConfigArgs, clap::Error> {
        let cmd =
            <ConfigArgs as clap::Args>::augment_args(Command::new("tether")).no_binary_name(true);
        let matches = cmd.try_get_matches_from(std::iter::empty::<OsString>())?;
        <ConfigArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The text given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&OsStr> {
        self.values.get(key).map(OsString::as_os_str)
    }

    /// Sets `key` as if it had been given as a flag; an empty value unsets it.
    ///
    /// Panics if `key` is not a configuration key: that is a bug in the caller.
    pub fn set(&mut self, key_name: &str, value: impl Into<OsString>) {
        let key = key(key_name).unwrap_or_else(|| panic!("{key_name} is not a configuration key"));
        let value = value.into();
        if value.is_empty() {
            self.values.remove(key.name);
        } else {
            self.values.insert(key.name, value);
        }
    }

    /// [`ConfigArgs::set`], by value.
    pub fn with(mut self, key: &str, value: impl Into<OsString>) -> ConfigArgs {
        self.set(key, value);
        self
    }

    /// The keys that were given, with their text, in table order.
    pub(super) fn given(&self) -> impl Iterator<Item = (&'static Key, &OsStr)> + '_ {
        KEYS.iter()
            .filter_map(|k| self.values.get(k.name).map(|v| (k, v.as_os_str())))
    }
}

impl fmt::Debug for ConfigArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&CONFIG_FLAG, &self.config);
        for (key, value) in self.given() {
            let text = value.to_string_lossy();
            match key.show {
                Show::Plain => map.entry(&key.name, &text),
                Show::Hidden | Show::Url => map.entry(&key.name, &Hidden(&text)),
            };
        }
        map.finish()
    }
}

/// The flag of `key`. Every value is taken as an `OsString` (paths may be non-UTF-8) and
/// parsed later by the key's type.
fn flag(key: &'static Key) -> Arg {
    let default = super::Config::documented_default(key);
    let help = match key.range_note() {
        Some(note) => format!("{} ({note}) [default: {default}]", key.summary()),
        None => format!("{} [default: {default}]", key.summary()),
    };
    let arg = Arg::new(key.name)
        .long(key.flag_name())
        .env(key.env_var())
        .value_name(key.value_name)
        .help_heading(key.heading)
        .help(help)
        .value_parser(ValueParser::os_string())
        .action(ArgAction::Set)
        .hide_env_values(key.show != Show::Plain);
    if key.flag {
        // `--trust-proxy` alone means true.
        arg.num_args(0..=1).default_missing_value("true")
    } else {
        arg
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let config = Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .env(CONFIG_ENV)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .action(ArgAction::Set)
            .help("TOML configuration file; keys as in the flags below, in snake_case");
        KEYS.iter()
            .fold(cmd.arg(config), |cmd, key| cmd.arg(flag(key)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ConfigArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(file) = matches.get_one::<PathBuf>(CONFIG_FLAG) {
            self.config = Some(file.clone()).filter(|f| !f.as_os_str().is_empty());
        }
        for key in KEYS {
            if let Some(value) = matches.get_one::<OsString>(key.name) {
                self.set(key.name, value.clone());
            }
        }
        Ok(())
    }
}

/// Arguments of `tether backup`, resolved by the CLI.
#[derive(Debug, Clone)]
pub struct BackupArgs {
    /// File the snapshot is written to.
    pub out: PathBuf,
    /// Base URL of a running server (`http://127.0.0.1:8080`): snapshot through its admin
    /// API. `None`: read the (stopped) data directory directly.
    pub server: Option<String>,
    /// Admin API key for `server`: the flag, else config's `admin_api_key`, else the one in
    /// `<data_dir>/secrets.toml` if that file exists.
    pub api_key: Option<String>,
    pub data_dir: PathBuf,
}

/// Arguments of `tether restore`.
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    pub from: PathBuf,
    /// Must be empty or absent.
    pub data_dir: PathBuf,
}

/// Arguments of `tether inspect`.
#[derive(Debug, Clone)]
pub struct InspectArgs {
    pub data_dir: PathBuf,
    pub json: bool,
}
