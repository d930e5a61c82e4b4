//! The hooks configured in the file (`[[milter]]`, `[[policy_service]]`, `[rspamd]`), as
//! layers of the stage chain: see `docs/filters.md`.
//!
//! ```text
//!  rcpt:  built-ins ─▶ policy services (file order) ─▶ milters (file order)
//!  data:  built-ins ─▶ PREPEND of policy services ─▶ milters (file order) ─▶ rspamd ─▶ DKIM signing ─▶ queue
//! ```
//!
//! Each hook is asked only for mail from the listeners its `listeners` key names
//! ([`Only`]); a policy service also skips logins and trusted networks unless
//! `ask_trusted` is set.

use smtp_server::filters::IpNetwork;
use smtp_server::filters::milter::{Milter, MilterSettings};
use smtp_server::filters::policy::{PolicyCheck, PolicyService};
use smtp_server::filters::rspamd::{Rspamd, RspamdSettings};
use smtp_server::{
    AsyncCheck, Check, CheckFuture, Decision, Flow, SessionInfo, StageRequest, Stages, filter,
    filter_async,
};

use crate::config::{Config, HookListener, MilterHook, MilterStage};

/// Adds the configured hooks to `stages`. They are added before the built-in filters,
/// so they run after them: a milter or rspamd sees the message with our `Received:` and
/// `Authentication-Results:` fields, a policy service only recipients we accept; our
/// own DKIM signature, added last, covers what they changed.
///
/// Among themselves: at RCPT the policy services are asked before the milters (as
/// Postfix's `smtpd_recipient_restrictions` come before its milters), each kind in the
/// order of the file; at the end of DATA the milters come before rspamd, so rspamd
/// scores the message as the milters left it.
pub fn add(stages: Stages, config: &Config) -> anyhow::Result<Stages> {
    // A layer added later runs earlier: add the last to run first.
    let mut stages = stages;
    if let Some(r) = &config.rspamd {
        let rspamd = Rspamd::new(RspamdSettings {
            address: r.address.clone(),
            timeout: r.timeout,
            password: r.password.clone(),
            max_size: r.max_size,
            on_failure: r.on_failure.into(),
            add_headers: r.add_headers,
            settings_id: r.settings_id.clone(),
        });
        stages = stages.data_layer(filter_async(Only::new(rspamd, &r.listeners)));
    }
    for m in config.milters.iter().rev() {
        let milter = Only::new(milter(m, &config.hostname)?, &m.listeners);
        stages = stages
            .connect_layer(filter_async(milter.clone()))
            .ehlo_layer(filter_async(milter.clone()))
            .auth_layer(filter_async(milter.clone()))
            .mail_layer(filter_async(milter.clone()))
            .rcpt_layer(filter_async(milter.clone()))
            .data_layer(filter_async(milter));
    }
    for s in config.policy_services.iter().rev() {
        let policy = PolicyCheck::new(PolicyService {
            address: s.address.clone(),
            timeout: s.timeout,
            default_action: s.default_action.into(),
            policy_context: s.policy_context.clone(),
            max_reply_size: s.max_reply_size,
        });
        let mut only = Only::new(policy, &s.listeners);
        if !s.ask_trusted {
            only.skip_trusted = Some(config.relay.trusted_networks.clone());
        }
        // `PolicyCheck::add_to`'s three layers, each behind the same gate.
        stages = stages
            .mail_layer(filter(only.clone()))
            .rcpt_layer(filter_async(only.clone()))
            .data_layer(filter(only));
    }
    Ok(stages)
}

/// The milter of a `[[milter]]` section; `hostname` is its `j` macro.
fn milter(m: &MilterHook, hostname: &str) -> anyhow::Result<Milter> {
    let settings = MilterSettings {
        name: m.name.clone(),
        address: m.address.as_str().to_owned(),
        hostname: hostname.to_owned(),
        daemon_name: m.daemon_name.clone(),
        connect_timeout: m.connect_timeout,
        command_timeout: m.command_timeout,
        end_of_message_timeout: m.end_of_message_timeout,
        default_action: m.default_action.into(),
        stages: MilterStage::set(&m.stages),
        max_replaced_body: m.max_replaced_body,
    };
    Milter::new(settings).map_err(|e| anyhow::anyhow!("[[milter]] {}: {e}", m.address.as_str()))
}

/// A hook asked only for mail from some listeners (and, for a policy service, not for
/// logins and trusted networks); elsewhere the request passes on untouched.
#[derive(Clone, Debug)]
pub struct Only<C> {
    check: C,
    listeners: Vec<HookListener>,
    /// Networks whose clients, and logins, are not asked (`None`: everyone is).
    skip_trusted: Option<Vec<IpNetwork>>,
}

impl<C> Only<C> {
    /// `check`, asked for mail from `listeners` only.
    pub fn new(check: C, listeners: &[HookListener]) -> Self {
        Self {
            check,
            listeners: listeners.to_vec(),
            skip_trusted: None,
        }
    }

    /// Whether the hook is asked in `session`.
    fn applies(&self, session: &SessionInfo) -> bool {
        if !self.listeners.contains(&HookListener::of(session)) {
            return false;
        }
        match &self.skip_trusted {
            Some(trusted) => {
                session.authenticated.is_none()
                    && !trusted.iter().any(|n| n.contains(session.peer.ip()))
            }
            None => true,
        }
    }
}

impl<C, R> AsyncCheck<R> for Only<C>
where
    C: AsyncCheck<R>,
    R: StageRequest,
{
    fn check(&self, request: R) -> CheckFuture<R> {
        if self.applies(request.session()) {
            self.check.check(request)
        } else {
            Box::pin(std::future::ready(Ok(Flow::Continue(request))))
        }
    }
}

impl<C, R> Check<R> for Only<C>
where
    C: Check<R>,
    R: StageRequest,
{
    fn check(&self, request: &mut R) -> Option<Decision> {
        if self.applies(request.session()) {
            self.check.check(request)
        } else {
            None
        }
    }
}
