//! What the types alone cannot check (keys that go together, sections another needs),
//! what only the system can tell (users, certificates, keys), and risky settings.

use super::problems::{At, Document, Problems};
use super::{Config, Dane, DefenceMode, ListenerMode, OutboundTls, RelayTls, Tls};

/// A greeting delay longer than this is worth a warning.
const GREETING_DELAY_WARNING: std::time::Duration = std::time::Duration::from_secs(30);

impl Config {
    /// The checks across keys and sections, each problem with its line; a section in
    /// `failed` could not be read and is not checked again.
    pub(super) fn check(&self, doc: &Document<'_>, failed: &[String], p: &mut Problems) {
        let read = |key: &str| !failed.iter().any(|f| f == key);
        if self.listeners.is_empty() && read("listener") {
            p.add(doc, At::Top(""), "no [[listener]]: nothing to listen on");
        }
        if self.queue.retry_intervals.is_empty() {
            p.add(
                doc,
                At::Key("queue", "retry_intervals"),
                "[queue] retry_intervals: give at least one interval",
            );
        }
        let o = &self.outbound;
        if o.relay_username.is_some() != o.relay_password.is_some() {
            p.add(
                doc,
                At::Key("outbound", "relay_username"),
                "[outbound] relay_username and relay_password go together",
            );
        }
        if o.relay_username.is_some() && o.relay.is_none() {
            p.add(
                doc,
                At::Key("outbound", "relay_username"),
                "[outbound] relay_username needs a relay",
            );
        }
        for (key, problem) in crate::tlsrpt::check_settings(&self.tls_reports) {
            p.add(doc, At::Key("tls_reports", key), &problem);
        }
        if o.mta_sts_timeout.is_zero() {
            p.add(
                doc,
                At::Key("outbound", "mta_sts_timeout"),
                "[outbound] mta_sts_timeout: must be more than 0",
            );
        }
        if o.mta_sts_port == 0 {
            p.add(
                doc,
                At::Key("outbound", "mta_sts_port"),
                "[outbound] mta_sts_port: must be a port from 1 to 65535",
            );
        }
        if let Some(cache) = &o.mta_sts_cache
            && cache.is_file()
        {
            p.add(
                doc,
                At::Key("outbound", "mta_sts_cache"),
                format!(
                    "[outbound] mta_sts_cache {}: is a file; give a directory",
                    cache.display()
                ),
            );
        }
        if o.dane_timeout.is_zero() {
            p.add(
                doc,
                At::Key("outbound", "dane_timeout"),
                "[outbound] dane_timeout: must be more than 0",
            );
        }
        if o.dane == Dane::On && !o.dane_resolver.ip().is_loopback() {
            p.add(
                doc,
                At::Key("outbound", "dane_resolver"),
                format!(
                    "[outbound] dane_resolver {}: must be on loopback (127.0.0.1 or ::1): \
                     DANE trusts its AD bit, which proves nothing after crossing a network",
                    o.dane_resolver
                ),
            );
        }
        for problem in super::shape::shaping_problems(o) {
            p.add(doc, At::Key("outbound", problem.0), problem.1);
        }
        for (i, problem) in super::shape::destination_problems(o) {
            p.add(doc, At::SubEntry("outbound", "destination", i, ""), problem);
        }
        if let Some(tls) = &self.tls
            && !tls.self_signed
            && (tls.certificate.is_none() || tls.private_key.is_none())
        {
            p.add(
                doc,
                At::Key("tls", ""),
                "[tls]: give certificate and private_key, or self_signed = true",
            );
        }
        if let Some(i) = self
            .listeners
            .iter()
            .position(|l| l.mode == ListenerMode::Smtps)
            && self.tls.is_none()
            && read("tls")
        {
            p.add(
                doc,
                At::Entry("listener", i, "mode"),
                "[[listener]] mode = \"smtps\" needs a [tls] section",
            );
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.mode == ListenerMode::Lmtp && lmtp_exposed(l.address.ip()) {
                p.add(
                    doc,
                    At::Entry("listener", i, "address"),
                    format!(
                        "[[listener]] mode = \"lmtp\" on {}: LMTP has no authentication and skips the checks of port 25; listen on loopback or a private address",
                        l.address
                    ),
                );
            }
        }
        if !self.local.domains.is_empty()
            && self.local.maildir.is_none()
            && self.local.mbox.is_none()
            && self.local.lmtp.is_none()
            && !self
                .local
                .domains
                .iter()
                .all(|d| self.local.targets.keys().any(|k| k.eq_ignore_ascii_case(d)))
        {
            p.add(
                doc,
                At::Key("local", "domains"),
                "[local]: local domains need maildir or lmtp or mbox to deliver to",
            );
        }
        if self.local.mbox.is_some() {
            for other in ["maildir", "lmtp"] {
                let given = match other {
                    "maildir" => self.local.maildir.is_some(),
                    _ => self.local.lmtp.is_some(),
                };
                if given {
                    p.add(
                        doc,
                        At::Key("local", "mbox"),
                        format!(
                            "[local] mbox: give one of maildir, mbox and lmtp, not mbox and {other}"
                        ),
                    );
                }
            }
        }
        for d in self.local.domains.iter().filter(|d| d.starts_with('[')) {
            if smtp_server::filters::literal_address(d).is_none() {
                p.add(
                    doc,
                    At::Key("local", "domains"),
                    format!(
                        "[local] domains: {d:?} is no address literal (write [192.0.2.1] or [IPv6:2001:db8::1])"
                    ),
                );
            }
        }
        for (i, key) in self.dkim_keys.iter().enumerate() {
            if key.domain.is_empty() || key.selector.is_empty() {
                p.add(
                    doc,
                    At::Entry("dkim_key", i, ""),
                    "[[dkim_key]]: give domain and selector",
                );
            }
        }
        if let Some(key) = &self.arc_seal
            && (key.domain.is_empty() || key.selector.is_empty())
        {
            p.add(
                doc,
                At::Key("arc_seal", ""),
                "[arc_seal]: give domain and selector",
            );
        }
        self.check_hooks(doc, &read, p);
        self.check_defences(doc, p);
        for problem in crate::aliases::check_settings(self) {
            add_alias_problem(doc, p, problem);
        }
        self.check_verify(doc, p);
        self.check_quota_and_targets(doc, p);
        let priorities = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    At::Entry("listener", i, "priority"),
                    "[[listener]]",
                    l.priority,
                )
            })
            .chain(self.accounts.iter().enumerate().map(|(i, a)| {
                (
                    At::Entry("account", i, "priority"),
                    "[[account]]",
                    a.priority,
                )
            }));
        for (at, section, priority) in priorities {
            if !(-9..=9).contains(&priority) {
                p.add(
                    doc,
                    at,
                    format!(
                        "{section} priority = {priority}: give a priority from -9 to 9 (RFC 6710)"
                    ),
                );
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if !a.username.contains('@') {
                p.add(
                    doc,
                    At::Entry("account", i, "username"),
                    format!(
                        "[[account]] username {:?}: use a full address (user@domain)",
                        a.username
                    ),
                );
            }
        }
    }

    /// `[[milter]]`, `[[policy_service]]`, `[rspamd]`: what their types do not say.
    /// A section with an entry that could not be read is not checked (its entries'
    /// places are not known).
    fn check_hooks(&self, doc: &Document<'_>, read: &dyn Fn(&str) -> bool, p: &mut Problems) {
        let no_listeners = |section: &str| {
            format!(
                "{section} listeners: give at least one of \"relay\", \"submission\", \"smtps\", \"sendmail\" (or remove the section)"
            )
        };
        let milters = if read("milter") {
            &self.milters[..]
        } else {
            &[]
        };
        let services = if read("policy_service") {
            &self.policy_services[..]
        } else {
            &[]
        };
        for (i, m) in milters.iter().enumerate() {
            if m.listeners.is_empty() {
                p.add(
                    doc,
                    At::Entry("milter", i, "listeners"),
                    no_listeners("[[milter]]"),
                );
            }
            for (key, timeout) in [
                ("connect_timeout", m.connect_timeout),
                ("command_timeout", m.command_timeout),
                ("end_of_message_timeout", m.end_of_message_timeout),
            ] {
                if timeout.is_zero() {
                    p.add(
                        doc,
                        At::Entry("milter", i, key),
                        format!("[[milter]] {key}: must be more than 0"),
                    );
                }
            }
            let name = |m: &super::MilterHook| match m.name.as_str() {
                "" => m.address.as_str().to_owned(),
                name => name.to_owned(),
            };
            if milters[..i].iter().any(|other| name(other) == name(m)) {
                p.add(
                    doc,
                    At::Entry("milter", i, "name"),
                    format!(
                        "[[milter]] name: {:?} is already the name of another milter (logs and X-Quarantine tell them apart by it)",
                        name(m)
                    ),
                );
            }
        }
        for (i, s) in services.iter().enumerate() {
            if s.listeners.is_empty() {
                p.add(
                    doc,
                    At::Entry("policy_service", i, "listeners"),
                    no_listeners("[[policy_service]]"),
                );
            }
            if s.timeout.is_zero() {
                p.add(
                    doc,
                    At::Entry("policy_service", i, "timeout"),
                    "[[policy_service]] timeout: must be more than 0",
                );
            }
        }
        if let Some(r) = &self.rspamd {
            if r.listeners.is_empty() {
                p.add(
                    doc,
                    At::Key("rspamd", "listeners"),
                    no_listeners("[rspamd]"),
                );
            }
            if r.timeout.is_zero() {
                p.add(
                    doc,
                    At::Key("rspamd", "timeout"),
                    "[rspamd] timeout: must be more than 0",
                );
            }
        }
    }

    /// `[[listener]] proxy_protocol`, `[early_talkers]`, `[helo_checks]`: what their
    /// types do not say.
    fn check_defences(&self, doc: &Document<'_>, p: &mut Problems) {
        for (i, l) in self.listeners.iter().enumerate() {
            let Some(proxy) = &l.proxy_protocol else {
                continue;
            };
            if proxy.load_balancers.is_empty() {
                p.add(
                    doc,
                    At::Entry("listener", i, "proxy_protocol"),
                    "[[listener]] proxy_protocol load_balancers: give the load balancers' addresses (e.g. [\"10.0.0.5/32\"]); with none, every connection would be closed",
                );
            }
            if proxy.timeout.is_zero() {
                p.add(
                    doc,
                    At::Entry("listener", i, "proxy_protocol"),
                    "[[listener]] proxy_protocol timeout: must be more than 0",
                );
            }
        }
        let no_listeners = |section: &str| {
            format!(
                "[{section}] listeners: give at least one of \"relay\", \"submission\", \"smtps\" (or mode = \"off\")"
            )
        };
        let e = &self.early_talkers;
        if e.mode != DefenceMode::Off && e.listeners.is_empty() {
            p.add(
                doc,
                At::Key("early_talkers", "listeners"),
                no_listeners("early_talkers"),
            );
        }
        let h = &self.helo_checks;
        if h.mode != DefenceMode::Off && h.listeners.is_empty() {
            p.add(
                doc,
                At::Key("helo_checks", "listeners"),
                no_listeners("helo_checks"),
            );
        }
        self.check_rates(doc, p);
        let g = &self.greylist;
        if g.mode != DefenceMode::Off {
            if g.retry_window <= g.delay {
                p.add(
                    doc,
                    At::Key("greylist", "retry_window"),
                    format!(
                        "[greylist] retry_window: must be longer than delay ({}): no retry could pass",
                        humantime::format_duration(g.delay)
                    ),
                );
            }
            for (key, zero) in [
                ("lifetime", g.lifetime.is_zero()),
                ("max_entries", g.max_entries == 0),
            ] {
                if zero {
                    p.add(
                        doc,
                        At::Key("greylist", key),
                        format!("[greylist] {key}: must be more than 0"),
                    );
                }
            }
        }
        let d = &self.dnsbl;
        if d.mode != DefenceMode::Off && d.threshold < 1 {
            p.add(
                doc,
                At::Key("dnsbl", "threshold"),
                format!(
                    "[dnsbl] threshold: {} would list every client (a client no list names scores 0); give 1 or more",
                    d.threshold
                ),
            );
        }
    }

    /// `[rate_limits]`: the failure counters' windows and steps.
    fn check_rates(&self, doc: &Document<'_>, p: &mut Problems) {
        let r = &self.rate_limits;
        let f = &r.failed_rcpts;
        let sub = |key| At::Sub("rate_limits", "failed_rcpts", key);
        if f.mode != DefenceMode::Off && (f.tarpit_after > 0 || f.disconnect_after > 0) {
            if f.window.is_zero() {
                p.add(
                    doc,
                    sub("window"),
                    "[rate_limits.failed_rcpts] window: must be more than 0",
                );
            }
            if f.disconnect_after > 0 && f.tarpit_after > f.disconnect_after {
                p.add(
                    doc,
                    sub("tarpit_after"),
                    format!(
                        "[rate_limits.failed_rcpts] tarpit_after ({}) is more than disconnect_after ({}): the tarpit would never start",
                        f.tarpit_after, f.disconnect_after
                    ),
                );
            }
            if f.tarpit_after > 0 && f.tarpit_step.is_zero() {
                p.add(
                    doc,
                    sub("tarpit_step"),
                    "[rate_limits.failed_rcpts] tarpit_step: must be more than 0 (or tarpit_after = 0: no tarpit)",
                );
            }
        }
        let l = &r.failed_logins;
        let sub = |key| At::Sub("rate_limits", "failed_logins", key);
        if l.mode != DefenceMode::Off && l.max_failures > 0 {
            for (key, zero) in [("window", l.window), ("lockout", l.lockout)] {
                if zero.is_zero() {
                    p.add(
                        doc,
                        sub(key),
                        format!("[rate_limits.failed_logins] {key}: must be more than 0"),
                    );
                }
            }
        }
        if r.max_tracked == 0 {
            p.add(
                doc,
                At::Key("rate_limits", "max_tracked"),
                "[rate_limits] max_tracked: must be more than 0",
            );
        }
    }

    /// What only the system can tell: the user exists, and the certificate and the
    /// signing keys the file names can be read and used. `mta check-config` reports
    /// these with the rest (with the lines of `text`, the file); `mta serve` finds them
    /// as it starts.
    pub fn check_files(&self, text: &str) -> Result<(), Problems> {
        let doc = Document::parse(text).ok();
        let mut p = Problems::default();
        let mut add = |at: At<'_>, message: String| match &doc {
            Some(doc) => p.add(doc, at, message),
            None => p.add_at_line(None, message),
        };
        #[cfg(unix)]
        if let Some(user) = &self.user
            && let Err(e) = crate::privileges::RunAs::lookup(user)
        {
            add(At::Top("user"), format!("{e:#}"));
        }
        if let Some(Tls {
            certificate: Some(cert),
            private_key: Some(key),
            self_signed: false,
        }) = &self.tls
            && let Err(e) = smtp_server::tls::load_pem_files(cert, key)
        {
            add(
                At::Key("tls", "certificate"),
                format!("[tls]: {:#}", anyhow::Error::from(e)),
            );
        }
        for (i, k) in self.dkim_keys.iter().enumerate() {
            if let Err(e) =
                auth_checks::DkimSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
            {
                add(
                    At::Entry("dkim_key", i, "private_key"),
                    format!(
                        "[[dkim_key]] private_key {}: {}",
                        k.private_key.display(),
                        e.with_causes()
                    ),
                );
            }
        }
        if let Some(k) = &self.arc_seal
            && let Err(e) =
                auth_checks::ArcSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
        {
            add(
                At::Key("arc_seal", "private_key"),
                format!(
                    "[arc_seal] private_key {}: {}",
                    k.private_key.display(),
                    e.with_causes()
                ),
            );
        }
        if self.greylist.mode != DefenceMode::Off
            && let Some(file) = &self.greylist.state_file
        {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !dir.is_dir() {
                add(
                    At::Key("greylist", "state_file"),
                    format!(
                        "[greylist] state_file {}: the directory {} does not exist",
                        file.display(),
                        dir.display()
                    ),
                );
            }
        }
        if let Some(ca) = &self.outbound.ca_file
            && let Err(e) = std::fs::metadata(ca)
        {
            add(
                At::Key("outbound", "ca_file"),
                format!("[outbound] ca_file {}: {e}", ca.display()),
            );
        }
        let mailboxes = crate::serve::known_mailboxes(self);
        for problem in crate::aliases::check_table(self, mailboxes.as_ref()).0 {
            match &doc {
                Some(doc) => add_alias_problem(doc, &mut p, problem),
                None => p.add_at_line(None, problem.message),
            }
        }
        p.into_result()
    }

    /// Risky settings worth a warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self
            .relay
            .trusted_networks
            .iter()
            .filter(|n| n.is_everything())
        {
            out.push(format!(
                "[relay] trusted_networks contains {n}: an open relay"
            ));
        }
        for n in self
            .listeners
            .iter()
            .filter_map(|l| l.proxy_protocol.as_ref())
            .flat_map(|p| &p.load_balancers)
            .filter(|n| n.is_everything())
        {
            out.push(format!(
                "[[listener]] proxy_protocol load_balancers contains {n}: any client can claim any address"
            ));
        }
        for l in &self.listeners {
            if l.mode == ListenerMode::Lmtp && l.address.ip().is_unspecified() {
                out.push(format!(
                    "[[listener]] mode = \"lmtp\" on {}: every interface; LMTP has no authentication, so keep it to your own MTAs (a firewall, or a loopback or private address)",
                    l.address
                ));
            }
        }
        let e = &self.early_talkers;
        if e.mode == DefenceMode::Off && !e.greeting_delay.is_zero() {
            out.push(
                "[early_talkers] greeting_delay with mode = \"off\": there is no delay".into(),
            );
        }
        if e.mode != DefenceMode::Off && e.greeting_delay > GREETING_DELAY_WARNING {
            out.push(format!(
                "[early_talkers] greeting_delay = \"{}\": some clients give up long before RFC 5321's 5 minutes; postscreen waits 6s",
                humantime::format_duration(e.greeting_delay)
            ));
        }
        for n in self
            .rate_limits
            .exempt_networks
            .iter()
            .chain(&self.greylist.allowlist)
            .filter(|n| n.is_everything())
        {
            out.push(format!(
                "[rate_limits] exempt_networks or [greylist] allowlist contains {n}: every client is exempt"
            ));
        }
        if self.dnsbl.mode == DefenceMode::Enforce && self.dnsbl.lists.is_empty() {
            out.push("[dnsbl] mode = \"enforce\" with no lists: nothing is checked".into());
        }
        if self.tls.is_none() {
            out.push("no [tls]: no STARTTLS, so no AUTH and no submission logins".into());
        }
        if self.outbound.tls == OutboundTls::Disabled {
            out.push("[outbound] tls = \"disabled\": mail leaves in plaintext".into());
            if self.outbound.relay_username.is_some()
                && self.outbound.relay_tls != RelayTls::Implicit
            {
                out.push(
                    "[outbound] relay_username with tls = \"disabled\": credentials never go \
                     in plaintext, so every login to the relay will fail"
                        .into(),
                );
            }
        }
        out.extend(self.dane_self_test());
        let o = &self.outbound;
        if o.dane == Dane::On
            && !self.dns.nameservers.is_empty()
            && !self.dns.nameservers.contains(&o.dane_resolver)
        {
            out.push(format!(
                "[outbound] dane = \"on\", but [dns] nameservers do not include dane_resolver \
                 {}: mail is routed by MX answers DANE did not validate, and an MX host the \
                 validated answer does not list waits (451 4.7.5)",
                o.dane_resolver
            ));
        }
        if self.accounts.iter().any(|a| !a.password.starts_with('$')) {
            out.push(
                "[[account]] with a plaintext password: prefer an argon2 or SHA-512-crypt hash"
                    .into(),
            );
        }
        // What check-config refuses in [aliases] (a loop, too deep) is only logged by a
        // running server, which refuses mail to it at RCPT.
        let mailboxes = crate::serve::known_mailboxes(self);
        let (refused, warned) = crate::aliases::check_table(self, mailboxes.as_ref());
        out.extend(refused.into_iter().map(|p| p.message));
        out.extend(warned);
        out
    }
}

impl Config {
    /// With `[outbound] dane = "on"`, the live self-test of the validating resolver:
    /// asks `dane_resolver` for the DNSKEY records of `dane_self_test` (`dane_timeout` at most, on
    /// a thread of its own, so that it works inside and outside a runtime) and warns
    /// when the answer is not validated (no AD bit) or does not come.
    fn dane_self_test(&self) -> Option<String> {
        let o = &self.outbound;
        if o.dane != Dane::On || !o.dane_resolver.ip().is_loopback() {
            return None;
        }
        let config = dns_mx::DaneConfig {
            resolver: o.dane_resolver,
            timeout: o.dane_timeout,
        };
        let name = o.dane_self_test.clone();
        let probe = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let resolver = dns_mx::DaneResolver::new(config).map_err(|e| e.to_string())?;
                resolver.validates(&name).await.map_err(|e| e.to_string())
            })
        });
        let resolver = o.dane_resolver;
        let name = &o.dane_self_test;
        match probe.join() {
            Ok(Ok(true)) => None,
            Ok(Ok(false)) => Some(format!(
                "[outbound] dane = \"on\", but the resolver {resolver} does not validate: its \
                 answer for {name} DNSKEY has no AD bit (a validating resolver such as Unbound \
                 with a trust anchor is needed, or set dane_self_test to a signed name it \
                 has an anchor for); DANE will find nothing secure"
            )),
            Ok(Err(e)) => Some(format!(
                "[outbound] dane = \"on\", but the resolver {resolver} did not answer the \
                 self-test ({name} DNSKEY): {e}; remote mail waits while DANE lookups fail"
            )),
            Err(_) => Some("[outbound] dane: the resolver self-test failed".into()),
        }
    }
}

/// A problem of `[aliases]` at its line: a key of `[aliases]`, an entry of
/// `[aliases.map]`, or (at `file`) a line of the aliases file, which its message names.
fn add_alias_problem(doc: &Document<'_>, p: &mut Problems, problem: crate::aliases::Problem) {
    use crate::aliases::Place;
    let at = match &problem.place {
        Place::Key(key) => At::Key("aliases", key),
        Place::Map(key) => At::Sub("aliases", "map", key),
        Place::File(..) => At::Key("aliases", "file"),
    };
    p.add(doc, at, problem.message);
}

/// The longest `[local] verify_timeout`: a client waits 5 minutes for a reply to RCPT
/// (RFC 5321 §4.5.3.2), so a probe may not take longer.
const VERIFY_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(300);

impl Config {
    /// `[local] verify_recipients` and its keys.
    fn check_verify(&self, doc: &Document<'_>, p: &mut Problems) {
        let local = &self.local;
        if local.verify_recipients == Some(crate::verify::VerifyRecipients::Lmtp)
            && local.lmtp.is_none()
            && local.targets.values().all(|t| t.lmtp.is_none())
        {
            p.add(
                doc,
                At::Key("local", "verify_recipients"),
                "[local] verify_recipients = \"lmtp\" needs lmtp, or a [local.targets] entry with lmtp (the server to ask)",
            );
        }
        if local
            .maildir_sync_delay
            .is_some_and(|t| t > crate::delivery::maildir_sync::MAX_DELAY)
        {
            p.add(
                doc,
                At::Key("local", "maildir_sync_delay"),
                "[local] maildir_sync_delay: give at most 1s (deliveries wait for it before the queue hears of them)",
            );
        }
        if let Some(t) = local.verify_timeout
            && (t.is_zero() || t > VERIFY_TIMEOUT_MAX)
        {
            p.add(
                doc,
                At::Key("local", "verify_timeout"),
                "[local] verify_timeout: give more than 0 and at most 5 minutes (what a client waits for a reply to RCPT)",
            );
        }
    }
}

/// Whether an LMTP listener at `ip` can be reached from the Internet: any address but
/// loopback, private (RFC 1918, RFC 4193), link-local and the unspecified one (every
/// interface, which gets a warning instead).
fn lmtp_exposed(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => lmtp_exposed(v4.into()),
            None => {
                !(v6.is_loopback()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
                    || v6.is_unspecified())
            }
        },
    }
}

impl Config {
    /// `[local.quota]` and `[local.targets]`: each domain and address in a local
    /// domain, each target exactly one of maildir, mbox and lmtp.
    fn check_quota_and_targets(&self, doc: &Document<'_>, p: &mut Problems) {
        let local = &self.local;
        let is_local = |domain: &str| local.domains.iter().any(|d| d.eq_ignore_ascii_case(domain));
        // The domain of a key (`example.net` or `bob@example.net`), if it is local.
        let local_domain_of = |key: &str| match key.rsplit_once('@') {
            Some((user, domain)) => !user.is_empty() && is_local(domain),
            None => is_local(key),
        };
        for (key, target) in &local.targets {
            if !local_domain_of(key) {
                p.add(
                    doc,
                    At::Sub("local", "targets", key),
                    format!(
                        "[local.targets] {key:?}: give a local domain (of [local] domains) or an address in one"
                    ),
                );
            }
            let given = [
                target.maildir.is_some(),
                target.mbox.is_some(),
                target.lmtp.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                p.add(
                    doc,
                    At::Sub("local", "targets", key),
                    format!("[local.targets] {key:?}: give exactly one of maildir, mbox and lmtp"),
                );
            }
        }
        let Some(quota) = &local.quota else {
            return;
        };
        for domain in quota.domains.keys() {
            if domain.contains('@') || !is_local(domain) {
                p.add(
                    doc,
                    At::Sub("local", "quota", "domains"),
                    format!(
                        "[local.quota.domains] {domain:?}: not a local domain (of [local] domains)"
                    ),
                );
            }
        }
        for mailbox in quota.mailboxes.keys() {
            if !mailbox.contains('@') || !local_domain_of(mailbox) {
                p.add(
                    doc,
                    At::Sub("local", "quota", "mailboxes"),
                    format!(
                        "[local.quota.mailboxes] {mailbox:?}: give a full address (user@domain) in a local domain"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod dane_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::Config;

    const BASE: &str = "hostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"relay\"\n";

    fn parse(outbound: &str) -> anyhow::Result<Config> {
        Config::parse(&format!("{BASE}[outbound]\n{outbound}"))
    }

    #[test]
    fn dane_is_off_by_default_and_probes_nothing() {
        let c = parse("").unwrap();
        assert_eq!(c.outbound.dane, super::Dane::Off);
        assert_eq!(c.outbound.dane_resolver.to_string(), "127.0.0.1:53");
        assert!(c.dane_self_test().is_none());
    }

    #[test]
    fn a_dane_resolver_off_loopback_is_refused() {
        let err = parse("dane = \"on\"\ndane_resolver = \"192.0.2.53:53\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("dane_resolver 192.0.2.53:53: must be on loopback"),
            "{text}"
        );
        // Off, the key is not used.
        assert!(parse("dane = \"off\"\ndane_resolver = \"192.0.2.53:53\"\n").is_ok());
        assert!(parse("dane = \"maybe\"\n").is_err());
    }

    #[test]
    fn the_dane_query_time_is_a_key() {
        assert_eq!(parse("").unwrap().outbound.dane_timeout.as_secs(), 5);
        assert_eq!(
            parse("dane_timeout = \"2s\"\n")
                .unwrap()
                .outbound
                .dane_timeout
                .as_secs(),
            2
        );
        let err = parse("dane_timeout = \"0s\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("dane_timeout: must be more than 0"),
            "{err:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resolver_that_does_not_validate_is_warned_about() {
        // An authoritative server: it answers, but never sets the AD bit.
        let dns = dns_mx::testing::TestDns::start(&[
            "$ORIGIN signed.test.\n@ 3600 IN SOA ns root 1 3600 600 86400 60\n@ 300 IN NS ns\nns 300 IN A 127.0.0.1\n",
        ])
        .await;
        let c = parse(&format!(
            "dane = \"on\"\ndane_resolver = \"{}\"\ndane_self_test = \"signed.test\"\n",
            dns.addr()
        ))
        .unwrap();
        let warnings = c.warnings().join("\n");
        assert!(warnings.contains("does not validate"), "{warnings}");
        // Nothing listening: the self-test gets no answer.
        let (silent, _socket) = dns_mx::testing::silent_nameserver().await;
        let c = parse(&format!(
            "dane = \"on\"\ndane_resolver = \"{silent}\"\ndane_self_test = \"signed.test\"\n"
        ))
        .unwrap();
        let warning = c.dane_self_test().expect("a warning");
        assert!(
            warning.contains("did not answer the self-test"),
            "{warning}"
        );
    }

    #[test]
    fn mx_lookups_elsewhere_than_the_dane_resolver_are_warned_about() {
        let config = |nameservers: &str| {
            parse(&format!(
                "dane = \"on\"\ndane_resolver = \"127.0.0.1:5399\"\n[dns]\nnameservers = [{nameservers}]\n"
            ))
            .unwrap()
            .warnings()
            .join("\n")
        };
        let elsewhere = config("\"127.0.0.1:5400\"");
        assert!(
            elsewhere.contains("[dns] nameservers do not include dane_resolver 127.0.0.1:5399"),
            "{elsewhere}"
        );
        let same = config("\"127.0.0.1:5399\"");
        assert!(!same.contains("nameservers do not include"), "{same}");
        // The system's resolvers: nothing to compare.
        let system = config("");
        assert!(!system.contains("nameservers do not include"), "{system}");
    }
}
