//! The defaults: the configuration `mta serve` runs with when given no file, where the
//! system's file lives, and the defaults of keys that no crate's own config struct
//! holds (the others take the default of the crate they configure).

use std::path::PathBuf;
use std::time::Duration;

/// The configuration `mta serve` runs with when given no file: unprivileged ports on
/// loopback, a self-signed certificate made at first start, mail for any user at
/// `localhost` delivered under `./mta-data/maildir/`.
pub const EMBEDDED_DEFAULT: &str = r#"
hostname = "localhost"

[[listener]]
address = "127.0.0.1:2525"
mode = "relay"

[[listener]]
address = "127.0.0.1:2587"
mode = "submission"

[tls]
self_signed = true

[queue]
path = "./mta-data/queue"

[local]
domains = ["localhost"]
maildir = "./mta-data/maildir"
accept_any_user = true
"#;

/// Where the configuration of a server installed as `docs/deploying.md` shows lives.
pub const SYSTEM_CONFIG: &str = "/etc/mta/mta.toml";

/// `[queue] path`.
pub(super) fn queue_path() -> PathBuf {
    PathBuf::from("./mta-data/queue")
}

/// `[queue] retry_intervals`: 5 minutes, then longer, up to every 4 hours.
pub(super) fn retry_intervals() -> Vec<Duration> {
    [5, 10, 30, 60, 120, 240]
        .map(|minutes| Duration::from_secs(60 * minutes))
        .to_vec()
}

/// `[queue] max_age`: 5 days, as Postfix's `maximal_queue_lifetime`.
pub(super) const MAX_AGE: Duration = Duration::from_secs(5 * 86_400);

/// `[queue] max_concurrent_deliveries`.
pub(super) const MAX_CONCURRENT_DELIVERIES: usize = 100;

/// `[outbound] max_per_destination`: as Postfix's `smtp_destination_concurrency_limit`.
pub(super) const MAX_PER_DESTINATION: usize = 20;

/// `[outbound] max_messages_per_connection`.
pub(super) const MAX_MESSAGES_PER_CONNECTION: usize = 100;

/// `[outbound] idle_timeout`: how long a connection waits for the next message.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[sendmail] max_connections`.
pub(super) const SENDMAIL_CONNECTIONS: usize = 8;

/// `[[milter]] daemon_name`.
pub(super) fn milter_daemon_name() -> String {
    smtp_server::filters::milter::MilterSettings::default().daemon_name
}

/// `[[milter]] connect_timeout`: as Postfix's `milter_connect_timeout`.
pub(super) fn milter_connect_timeout() -> Duration {
    smtp_server::filters::milter::MilterSettings::default().connect_timeout
}

/// `[[milter]] command_timeout`: as Postfix's `milter_command_timeout`.
pub(super) fn milter_command_timeout() -> Duration {
    smtp_server::filters::milter::MilterSettings::default().command_timeout
}

/// `[[milter]] end_of_message_timeout`: as Postfix's `milter_content_timeout`.
pub(super) fn milter_end_of_message_timeout() -> Duration {
    smtp_server::filters::milter::MilterSettings::default().end_of_message_timeout
}

/// `[[policy_service]] timeout`.
pub(super) fn policy_timeout() -> Duration {
    smtp_server::filters::policy::PolicyService::default().timeout
}

/// `[rspamd] address`: the normal worker on this machine.
pub(super) fn rspamd_address() -> smtp_server::filters::rspamd::RspamdAddress {
    smtp_server::filters::rspamd::RspamdSettings::default().address
}

/// `[rspamd] timeout`.
pub(super) fn rspamd_timeout() -> Duration {
    smtp_server::filters::rspamd::RspamdSettings::default().timeout
}

/// `[[milter]] max_replaced_body`.
pub(super) fn milter_max_replaced_body() -> usize {
    smtp_server::filters::milter::MilterSettings::default().max_replaced_body
}

/// `[[policy_service]] max_reply_size`.
pub(super) fn policy_max_reply_size() -> usize {
    smtp_server::filters::policy::PolicyService::default().max_reply_size
}

/// `[rspamd] max_size`.
pub(super) fn rspamd_max_size() -> usize {
    smtp_server::filters::rspamd::RspamdSettings::default().max_size
}

/// `[[listener]] proxy_protocol` `timeout`: the time for the PROXY header.
pub(super) fn proxy_timeout() -> Duration {
    smtp_server::ProxyProtocol::default().timeout
}

/// `[greylist] state_file`: this name in the data directory.
pub(super) const GREYLIST_STATE_FILE: &str = "greylist.state";

/// `[aliases] max_depth`.
pub(super) fn alias_max_depth() -> usize {
    crate::aliases::Aliases::MAX_DEPTH
}

/// `[aliases] max_expansion`: as Postfix's `virtual_alias_expansion_limit`.
pub(super) fn alias_max_expansion() -> usize {
    crate::aliases::Aliases::MAX_EXPANSION
}

/// `[rate_limits] exempt_networks`: this machine (loopback), as Postfix's
/// `smtpd_client_event_limit_exceptions = $mynetworks` exempts it: local scripts,
/// monitoring and a content filter reinjecting mail are not to be limited.
pub(super) fn rate_exempt_networks() -> Vec<smtp_server::filters::IpNetwork> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}
