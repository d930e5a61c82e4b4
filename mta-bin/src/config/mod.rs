//! The configuration file (TOML), read once into typed structs that `mta serve`, its
//! reload, `mta check-config` and the client commands all use.
//!
//! | file | holds |
//! | --- | --- |
//! | `shape.rs` | the file's shape: one typed struct per section |
//! | `defaults.rs` | the embedded default and the defaults of keys no crate holds |
//! | `checks.rs` | what the types alone cannot check, what only the system can tell, warnings |
//! | `problems.rs` | each problem with its line, "did you mean" |
//!
//! `docs/configuration.md` describes every key.

mod checks;
mod defaults;
mod problems;
mod shape;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

pub use defaults::{EMBEDDED_DEFAULT, SYSTEM_CONFIG};
pub use problems::Problems;
pub use shape::*;

use problems::{At, Document};

/// The top-level keys and sections, for "did you mean".
const KEYS: &[&str] = &[
    "hostname",
    "user",
    "data_dir",
    "listener",
    "tls",
    "queue",
    "local",
    "account",
    "limits",
    "relay",
    "dns",
    "outbound",
    "auth_checks",
    "dkim_key",
    "arc_seal",
    "metrics",
    "sendmail",
    "milter",
    "policy_service",
    "rspamd",
    "early_talkers",
    "helo_checks",
    "rate_limits",
    "greylist",
    "dnsbl",
    "reverse_dns",
    "aliases",
    "tls_reports",
];

impl Config {
    /// Parses a file's text. Every problem is reported (a [`Problems`] error), each with
    /// its line: each section is read on its own, then checked.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let doc = Document::parse(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let mut p = Problems::default();
            p.add_at_line(line, problems::explain(e.message()));
            anyhow::Error::new(p)
        })?;
        let mut problems = Problems::default();
        let mut config = Config::empty();
        let mut failed = Vec::new();
        let mut hostname = false;
        for (key, value) in doc.entries() {
            let errors = config.read(key, value);
            if key == "hostname" {
                hostname = errors.is_empty();
            }
            if !errors.is_empty() {
                failed.push(key.to_owned());
            }
            for (line, message) in errors {
                problems.add_at_line(Some(doc.line_of(line)), message);
            }
        }
        if !hostname && !failed.iter().any(|k| k == "hostname") {
            problems.add(
                &doc,
                At::Top(""),
                "hostname is missing (our name: hostname = \"mx.example.org\")",
            );
        }
        config.check(&doc, &failed, &mut problems);
        problems.into_result().map_err(anyhow::Error::new)?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The configuration the client commands (`mta queue`, `mta sendmail`, `mta send`)
    /// use: `path` when given, else `$MTA_CONFIG`, else [`SYSTEM_CONFIG`] when it exists
    /// (cron and PHP run `sendmail` with no option to point elsewhere), else the
    /// embedded default.
    pub fn find(path: Option<&Path>) -> anyhow::Result<Self> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("MTA_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let system = PathBuf::from(SYSTEM_CONFIG);
                system.exists().then_some(system)
            });
        match path {
            Some(path) => Self::load(&path),
            None => Self::parse(EMBEDDED_DEFAULT),
        }
    }

    /// The directory for generated files (the self-signed certificate): `data_dir`,
    /// else the queue directory's parent.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            self.queue
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
    }

    /// The greylisting state file: `[greylist] state_file`, else `greylist.state` in the
    /// data directory.
    pub fn greylist_state_file(&self) -> PathBuf {
        self.greylist
            .state_file
            .clone()
            .unwrap_or_else(|| self.data_dir().join(defaults::GREYLIST_STATE_FILE))
    }

    /// Every section at its default, and no host name yet.
    fn empty() -> Self {
        Self {
            hostname: String::new(),
            user: None,
            data_dir: None,
            listeners: Vec::new(),
            tls: None,
            queue: Queue::default(),
            local: Local::default(),
            accounts: Vec::new(),
            limits: Limits::default(),
            relay: Relay::default(),
            dns: Dns::default(),
            outbound: Outbound::default(),
            auth_checks: auth_checks::Policy::default(),
            dkim_keys: Vec::new(),
            arc_seal: None,
            metrics: None,
            sendmail: Sendmail::default(),
            milters: Vec::new(),
            policy_services: Vec::new(),
            rspamd: None,
            early_talkers: EarlyTalkers::default(),
            helo_checks: HeloChecks::default(),
            rate_limits: RateLimits::default(),
            greylist: Greylist::default(),
            dnsbl: Dnsbl::default(),
            reverse_dns: ReverseDns::default(),
            aliases: None,
            tls_reports: TlsReporting::default(),
        }
    }

    /// Reads one top-level key or section into its field; its problems, each with the
    /// byte offset it is at.
    fn read(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Vec<(usize, String)> {
        let one = |result: Result<(), toml::de::Error>| match result {
            Ok(()) => Vec::new(),
            Err(e) => vec![problem(key, None, value, &e)],
        };
        match key {
            "hostname" => one(set(&mut self.hostname, value)),
            "user" => one(set(&mut self.user, value)),
            "data_dir" => one(set(&mut self.data_dir, value)),
            "listener" => set_each(key, &mut self.listeners, value),
            "tls" => one(set(&mut self.tls, value)),
            "queue" => one(set(&mut self.queue, value)),
            "local" => one(set(&mut self.local, value)),
            "account" => set_each(key, &mut self.accounts, value),
            "limits" => one(set(&mut self.limits, value)),
            "relay" => one(set(&mut self.relay, value)),
            "dns" => one(set(&mut self.dns, value)),
            "outbound" => one(set(&mut self.outbound, value)),
            "auth_checks" => one(set(&mut self.auth_checks, value)),
            "dkim_key" => set_each(key, &mut self.dkim_keys, value),
            "arc_seal" => one(set(&mut self.arc_seal, value)),
            "metrics" => one(set(&mut self.metrics, value)),
            "sendmail" => one(set(&mut self.sendmail, value)),
            "milter" => set_each(key, &mut self.milters, value),
            "policy_service" => set_each(key, &mut self.policy_services, value),
            "rspamd" => one(set(&mut self.rspamd, value)),
            "early_talkers" => one(set(&mut self.early_talkers, value)),
            "helo_checks" => one(set(&mut self.helo_checks, value)),
            "rate_limits" => one(set(&mut self.rate_limits, value)),
            "greylist" => one(set(&mut self.greylist, value)),
            "dnsbl" => one(set(&mut self.dnsbl, value)),
            "reverse_dns" => one(set(&mut self.reverse_dns, value)),
            "aliases" => one(set(&mut self.aliases, value)),
            "tls_reports" => one(set(&mut self.tls_reports, value)),
            unknown => {
                let hint = problems::nearest(unknown, KEYS.iter().copied())
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                vec![(value.span().start, format!("unknown key `{unknown}`{hint}"))]
            }
        }
    }
}

/// Reads `value` into `slot`.
fn set<T: DeserializeOwned>(
    slot: &mut T,
    value: &Spanned<DeValue<'_>>,
) -> Result<(), toml::de::Error> {
    *slot = T::deserialize(ValueDeserializer::from(value.clone()))?;
    Ok(())
}

/// Reads an array of tables (`[[key]]`) entry by entry, so that every bad entry is told.
fn set_each<T: DeserializeOwned>(
    key: &str,
    slot: &mut Vec<T>,
    value: &Spanned<DeValue<'_>>,
) -> Vec<(usize, String)> {
    let Some(items) = value.get_ref().as_array() else {
        return vec![(
            value.span().start,
            format!("[[{key}]]: write one [[{key}]] table per entry"),
        )];
    };
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match T::deserialize(ValueDeserializer::from(item.clone())) {
            Ok(entry) => slot.push(entry),
            Err(e) => problems.push(problem(key, Some(i), item, &e)),
        }
    }
    problems
}

/// A deserialization problem of `key` as `[section] field: why`, at its offset.
fn problem(
    key: &str,
    entry: Option<usize>,
    value: &Spanned<DeValue<'_>>,
    e: &toml::de::Error,
) -> (usize, String) {
    let offset = e.span().map_or(value.span().start, |s| s.start);
    let field = problems::key_at(value.get_ref(), offset);
    let section = match (entry, value.get_ref()) {
        (Some(_), _) => format!("[[{key}]]"),
        (None, DeValue::Table(_)) => format!("[{key}]"),
        (None, _) => key.to_owned(),
    };
    let place = match field {
        Some(field) => format!("{section} {field}"),
        None => section,
    };
    (
        offset,
        format!("{place}: {}", problems::explain(e.message())),
    )
}

#[cfg(test)]
mod tests;
