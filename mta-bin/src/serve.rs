//! `mta serve`: wires the server, the queue and local delivery together.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use mail_queue::{Bytes, NewMessage, Queue, QueueConfig};
use smtp_proto::{EnhancedStatus, Reply, ReplyCode};
use smtp_server::filters::{
    DomainSet, HopLimit, LocalRecipients, NotifyPolicy, PasswordCheck, Received, RelayPolicy,
    SubmittedHeaders,
};
use smtp_server::{
    BoxError, DataRequest, Decision, Limits, ListenerConfig, ListenerMode, Server, ServerConfig,
    SessionInfo, Stages, filter, filter_async,
};
use tokio::sync::watch;

use crate::accounts::Accounts;
use crate::config::{Config, DefenceMode};
use crate::delivery::{Delivery, LocalRoutes, Relay, Remote, RemoteConfig};
use auth_checks::{
    ArcSigner, AuthChecks, DkimSigner, DkimSigning, DnsblFilter, RdnsFilter, Verifier,
};
use dns_mx::{MxConfig, MxResolver};
use smtp_client::{OutboundConfig, TlsConfigs};
use smtp_server::filters::greylist::{Greylist, GreylistSettings, GreylistStats};
use smtp_server::filters::rate::{RateLimits, RateSettings, RateStats};

/// An MTA with filters of your own: the `mta` program (configuration, listeners, queue,
/// delivery, command line, reload) with your closures and layers in its stage chain.
///
/// Each function given to [`MtaBuilder::stages`] receives the chain with the built-in
/// filters in place and adds to it (with the `*_filter` and `*_layer` methods of
/// [`Stages`]); what it adds runs before the built-ins, after the relay policy, which
/// always comes first. It is called again at each reload, so your filters survive it.
///
/// ```no_run
/// use smtp_server::{Decision, EnhancedStatus};
///
/// fn main() -> std::process::ExitCode {
///     mta_bin::MtaBuilder::new()
///         .stages(|stages, _config| {
///             stages.rcpt_filter(|req| {
///                 let to = req.to.to_string();
///                 to.contains("+spam@").then(|| {
///                     Decision::reject::<550>(EnhancedStatus::NOT_AUTHORIZED, "Not here")
///                 })
///             })
///         })
///         .main()
/// }
/// ```
#[derive(Clone, Default)]
pub struct MtaBuilder {
    additions: Vec<Arc<AddFilters>>,
}

/// What [`MtaBuilder::stages`] keeps.
type AddFilters = dyn Fn(Stages, &Config) -> Stages + Send + Sync;

impl std::fmt::Debug for MtaBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaBuilder")
            .field("additions", &self.additions.len())
            .finish()
    }
}

impl MtaBuilder {
    /// The MTA with the built-in filters only (the `mta` program).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds filters: `add` gets the chain (and the configuration in force) and returns
    /// it with more. Call it as often as you like; later calls run first.
    pub fn stages(
        mut self,
        add: impl Fn(Stages, &Config) -> Stages + Send + Sync + 'static,
    ) -> Self {
        self.additions.push(Arc::new(add));
        self
    }

    /// Runs the `mta` command line (`serve`, `queue`, `reload`, `check-config`,
    /// `sendmail`, ...) with these filters, and returns its exit status.
    pub fn main(self) -> std::process::ExitCode {
        crate::cli::run(self)
    }

    /// Starts an MTA on `config` with these filters (see [`Mta::start`]).
    pub async fn start(self, config: Config) -> anyhow::Result<Mta> {
        Mta::start_with(config, None, self).await
    }

    fn add_to(&self, mut stages: Stages, config: &Config) -> Stages {
        for add in &self.additions {
            stages = add(stages, config);
        }
        stages
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reloads the
/// configuration from `path` (see [`Reload`]).
pub async fn serve(
    config: Config,
    path: Option<PathBuf>,
    custom: MtaBuilder,
) -> anyhow::Result<()> {
    let mta = Mta::start_with(config, path, custom).await?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // The handlers are in place before the banner and READY: a SIGTERM right after
        // them stops the server gracefully instead of killing it.
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        mta.print_banner();
        crate::notify::notify("READY=1");
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => match mta.reload.reload() {
                    Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload refused; the running configuration stays in force"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        mta.print_banner();
        let _ = tokio::signal::ctrl_c().await;
    }
    println!("mta: shutting down");
    #[cfg(unix)]
    crate::notify::notify("STOPPING=1");
    mta.stop().await;
    Ok(())
}

/// Reloads the configuration of a running MTA (SIGHUP, `mta reload`): listener
/// policy, accounts, limits, TLS certificate, sender authentication, signing keys, local
/// delivery and outbound settings, the anti-abuse defences (`[early_talkers]`,
/// `[helo_checks]`, a listener's `proxy_protocol`, `[rate_limits]`, `[greylist]`,
/// `[dnsbl]`, `[reverse_dns]`) take effect for new connections and deliveries;
/// connections and queued mail are untouched. The rate limits' tables and the
/// greylisting state are kept when their sections did not change (see [`Defences`]). A file that does not parse or
/// validate, or that changes what only a restart can change (listeners' addresses and
/// modes, `[queue]`, `[metrics]`), is refused as a whole and the running configuration
/// stays in force.
#[derive(Clone, Debug)]
pub struct Reload {
    path: Option<PathBuf>,
    server: smtp_server::Reloader,
    delivery: Delivery,
    queue: Queue,
    queue_config: QueueConfig,
    metrics: Option<std::net::SocketAddr>,
    user: Option<String>,
    sendmail_socket: Option<PathBuf>,
    /// Counts kept across reloads.
    counters: Counters,
    /// The chain mail handed in on the control and sendmail sockets goes through.
    injected: Arc<std::sync::RwLock<Stages>>,
    /// The filters added to the built-ins.
    custom: MtaBuilder,
}

impl Reload {
    /// Reads the file again and applies it, or says why not.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            anyhow::bail!(
                "the server runs on the embedded default (no --config): nothing to reload"
            );
        };
        let config = Config::load(path)?;
        if queue_config(&config) != self.queue_config {
            anyhow::bail!("[queue] changed: restart to apply that");
        }
        if config.metrics.as_ref().map(|m| m.address) != self.metrics {
            anyhow::bail!("[metrics] changed: restart to apply that");
        }
        if config.user != self.user {
            anyhow::bail!("user changed: restart to apply that");
        }
        if config.sendmail.socket != self.sendmail_socket {
            anyhow::bail!("[sendmail] socket changed: restart to apply that");
        }
        let parts = Parts::build(&config, &self.queue, &self.counters, &self.custom)?;
        self.server
            .reload(parts.server_config, parts.stages.clone())?;
        self.counters.defences.commit(parts.defences);
        self.queue.route_notifications(parts.notification_route);
        self.delivery.replace(&parts.delivery);
        if let Ok(mut injected) = self.injected.write() {
            *injected = parts.stages;
        }
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        Ok(())
    }
}

/// With `user` set: becomes that user (when started as root), after creating for it
/// the queue, data, sendmail-socket and Maildir directories that are missing. Without
/// it, a server started as root says that it keeps running as root.
#[cfg(unix)]
fn give_up_root(config: &Config) -> anyhow::Result<()> {
    let Some(name) = &config.user else {
        if nix::unistd::Uid::effective().is_root() {
            tracing::warn!(
                "running as root: set `user` in the configuration to give up root once the listeners are bound"
            );
        }
        return Ok(());
    };
    let user = crate::privileges::RunAs::lookup(name)?;
    if user.is_current() {
        return Ok(());
    }
    user.prepare_dir(&config.queue.path)?;
    user.prepare_dir(&config.data_dir())?;
    if let Some(cache) = &config.outbound.mta_sts_cache {
        user.prepare_dir(cache)?;
    }
    if let Some(parent) = config.sendmail.socket.as_deref().and_then(|s| s.parent()) {
        user.prepare_dir(parent)?;
    }
    if let Some(maildir) = &config.local.maildir {
        user.prepare_dir(maildir)?;
    }
    if let Some(mbox) = &config.local.mbox {
        user.prepare_dir(mbox)?;
    }
    for target in config.local.targets.values() {
        if let Some(root) = target.maildir.as_ref().or(target.mbox.as_ref()) {
            user.prepare_dir(root)?;
        }
    }
    user.switch()?;
    tracing::info!(user = user.name(), "listeners bound; root given up");
    Ok(())
}

/// The local mailboxes (accounts and `[local] mailboxes`, lower-cased), unless any user
/// is accepted.
pub(crate) fn known_mailboxes(config: &Config) -> Option<Arc<std::collections::HashSet<String>>> {
    if config.local.accept_any_user {
        return None;
    }
    let accounts = config.accounts.iter().map(|a| &a.username);
    let mailboxes = accounts.chain(&config.local.mailboxes);
    Some(Arc::new(mailboxes.map(|m| m.to_lowercase()).collect()))
}

/// DKIM signing with the `[[dkim_key]]`s: of mail from logins and trusted networks, and
/// of mail injected by `mta sendmail` and `mta send` (a local session is a login).
fn dkim_signing(config: &Config) -> anyhow::Result<DkimSigning> {
    let signers = config
        .dkim_keys
        .iter()
        .map(|k| {
            DkimSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
                .with_context(|| format!("[[dkim_key]] {} (selector {})", k.domain, k.selector))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(DkimSigning::new(
        signers,
        config.relay.trusted_networks.clone(),
    ))
}

/// Counters that outlive a reload (the pieces that count into them are rebuilt).
#[derive(Clone, Debug, Default)]
struct Counters {
    /// Sender-authentication verdicts.
    auth: Arc<auth_checks::AuthStats>,
    /// DNS lookups for routing.
    dns: Arc<dns_mx::LookupStats>,
    /// DNS blocklist and reverse-DNS lookups and verdicts.
    door_dns: Arc<auth_checks::DnsStats>,
    /// The rate limits' tables and the greylisting state.
    defences: Defences,
    /// The TLS report counts (`[tls_reports]`, RFC 8460); `None` when off.
    tls_rpt: Option<Arc<crate::tlsrpt::Aggregator>>,
    /// Recipient verification's answers.
    verify: Arc<crate::verify::VerifyStats>,
    /// What outbound traffic shaping held back.
    shaping: Arc<crate::delivery::ShapingStats>,
}

/// The rate limits and the greylist of a running MTA: their tables and state (and
/// counters) are kept across reloads while their settings stay the same; a reload that
/// changes them starts them anew (the greylist reads back the state it saved just
/// before). Clones share them.
#[derive(Clone, Debug, Default)]
pub struct Defences {
    current: Arc<std::sync::Mutex<DefenceState>>,
}

/// What [`Defences`] holds: each with the settings it was made with.
#[derive(Clone, Debug, Default)]
struct DefenceState {
    rate: Option<(RateSettings, RateLimits)>,
    greylist: Option<(GreylistSettings, Greylist)>,
}

impl Defences {
    fn state(&self) -> std::sync::MutexGuard<'_, DefenceState> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate limits and greylist for `rate` and `greylist` (`None`: greylisting off):
    /// those in use when their settings are the same, else new ones (the greylist in
    /// use saves its state first, for the new one to read). Nothing changes here until
    /// [`Defences::commit`].
    fn prepare(&self, rate: RateSettings, greylist: Option<GreylistSettings>) -> DefenceState {
        let state = self.state().clone();
        let rate = match state.rate {
            Some((settings, limits)) if settings == rate => (settings, limits),
            _ => (rate.clone(), RateLimits::new(rate)),
        };
        let greylist = greylist.map(|wanted| match state.greylist {
            Some((settings, greylist)) if settings == wanted => (settings, greylist),
            old => {
                if let Some((_, old)) = old {
                    save_greylist(&old);
                }
                (wanted.clone(), Greylist::new(wanted))
            }
        });
        DefenceState {
            rate: Some(rate),
            greylist,
        }
    }

    /// Puts `prepared` in use (the configuration it was made for is in force).
    fn commit(&self, prepared: DefenceState) {
        let kept = prepared.greylist.as_ref().map(|(s, _)| s.clone());
        let old = std::mem::replace(&mut *self.state(), prepared);
        // A greylist turned off keeps what it learned for when it is turned on again.
        if let Some((settings, greylist)) = old.greylist
            && kept.as_ref() != Some(&settings)
        {
            save_greylist(&greylist);
        }
    }

    /// The rate limits' counters (zero before the first start).
    pub fn rate_stats(&self) -> Arc<RateStats> {
        self.state()
            .rate
            .as_ref()
            .map_or_else(Arc::default, |(_, r)| r.stats())
    }

    /// The greylist's counters (zero while greylisting is off).
    pub fn greylist_stats(&self) -> Arc<GreylistStats> {
        self.state()
            .greylist
            .as_ref()
            .map_or_else(Arc::default, |(_, g)| g.stats())
    }

    /// Writes the greylisting state file now (at shutdown).
    pub fn save(&self) {
        let greylist = self.state().greylist.clone();
        if let Some((_, greylist)) = greylist {
            save_greylist(&greylist);
        }
    }
}

/// Saves `greylist`'s state, or logs why not.
fn save_greylist(greylist: &Greylist) {
    if let Err(e) = greylist.save() {
        tracing::warn!(error = %e, "cannot save the greylisting state");
    }
}

/// The anti-abuse filters of one build of the chain: the rate limits and greylist
/// (kept across reloads, in [`Defences`]) and the counters of the DNS defences. Mail
/// handed in while no server runs meets none of them.
struct Door<'a> {
    rate: Option<&'a RateLimits>,
    greylist: Option<&'a Greylist>,
    dns: &'a Arc<auth_checks::DnsStats>,
    verify: &'a Arc<crate::verify::VerifyStats>,
}

/// What the configuration makes: the server's settings and stages, and the delivery.
struct Parts {
    server_config: smtp_server::ServerConfig,
    stages: Stages,
    delivery: Delivery,
    /// The rate limits and greylist the stages use, for [`Defences::commit`].
    defences: DefenceState,
    /// Where the queue's delivery status notifications to a sender go (`[aliases]`).
    notification_route: Option<mail_queue::NotificationRoute>,
}

impl Parts {
    fn build(
        config: &Config,
        queue: &Queue,
        counters: &Counters,
        custom: &MtaBuilder,
    ) -> anyhow::Result<Self> {
        let tls = match &config.tls {
            None => None,
            Some(t) if t.self_signed => Some(crate::tls::self_signed(
                &config.hostname,
                &config.data_dir().join("tls"),
            )?),
            Some(t) => match (&t.certificate, &t.private_key) {
                (Some(cert), Some(key)) => Some(smtp_server::tls::load_pem_files(cert, key)?),
                _ => None,
            },
        };
        let local_domains = DomainSet::new(&config.local.domains);
        let mailboxes = known_mailboxes(config);
        let resolver = resolver(config)?.count_into(Arc::clone(&counters.dns));
        let trusted = &config.relay.trusted_networks;
        let greylist = match config.greylist.mode {
            DefenceMode::Off => None,
            _ => Some(
                config
                    .greylist
                    .settings(Some(greylist_state_file(config)?), trusted),
            ),
        };
        let defences = counters
            .defences
            .prepare(config.rate_limits.settings(trusted), greylist);
        let door = Door {
            rate: defences.rate.as_ref().map(|(_, r)| r),
            greylist: defences.greylist.as_ref().map(|(_, g)| g),
            dns: &counters.door_dns,
            verify: &counters.verify,
        };
        // The SRS secret, made at the first start, before the stages read it.
        let forwarding = crate::aliases::prepare_srs(config)?;
        let aliases =
            crate::aliases::Aliases::from_config(config, mailboxes.as_ref())?.map(Arc::new);
        let stages = stages(
            config,
            &local_domains,
            mailboxes.as_ref(),
            aliases.as_ref(),
            &resolver,
            queue.clone(),
            &counters.auth,
            &door,
        )?;
        let stages = custom.add_to(stages, config);
        let local = LocalRoutes::from_config(config);
        let postmaster = config
            .local
            .domains
            .first()
            .map(|d| format!("postmaster@{d}"));
        let remote = remote_delivery(config, resolver, forwarding, &counters.shaping)?;
        if let (Some(sink), Some(reports)) = (&counters.tls_rpt, remote.tls_reports()) {
            reports.forward_to(Arc::clone(sink) as _);
        }
        Ok(Self {
            server_config: server_config(config, tls, queue)?,
            stages,
            delivery: Delivery::new(local_domains, local, Some(remote), postmaster, mailboxes),
            defences,
            notification_route: aliases.map(crate::aliases::Aliases::notification_route),
        })
    }
}

/// The greylisting state file. Its directory must exist, unless it is the default one
/// in the data directory, which is made.
fn greylist_state_file(config: &Config) -> anyhow::Result<PathBuf> {
    let file = config.greylist_state_file();
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if config.greylist.state_file.is_none() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("[greylist] cannot make {}", dir.display()))?;
    } else if !dir.is_dir() {
        anyhow::bail!(
            "[greylist] state_file {}: the directory {} does not exist",
            file.display(),
            dir.display()
        );
    }
    Ok(file)
}

/// The largest message accepted (`[limits] max_message_size`).
pub(crate) fn max_message_size(config: &Config) -> u64 {
    config
        .limits
        .max_message_size
        .unwrap_or(Limits::default().max_message_size)
}

/// The resolver of the configuration (`[dns]`).
fn resolver(config: &Config) -> anyhow::Result<MxResolver> {
    Ok(MxResolver::new(MxConfig {
        nameservers: config.dns.nameservers.clone(),
        our_names: vec![config.hostname.clone()],
        ..MxConfig::default()
    })?)
}

/// The stage chain of a server on `config` with the filters of `custom`, for mail
/// handed in while no server runs (`sendmail` opening the queue itself): it meets the
/// same filters as it would through the server's sockets.
pub(crate) fn local_stages(
    config: &Config,
    queue: &Queue,
    custom: &MtaBuilder,
) -> anyhow::Result<Stages> {
    let mailboxes = known_mailboxes(config);
    let aliases = crate::aliases::Aliases::from_config(config, mailboxes.as_ref())?.map(Arc::new);
    let stages = stages(
        config,
        &DomainSet::new(&config.local.domains),
        mailboxes.as_ref(),
        aliases.as_ref(),
        &resolver(config)?,
        queue.clone(),
        &Arc::default(),
        &Door {
            rate: None,
            greylist: None,
            dns: &Arc::default(),
            verify: &Arc::default(),
        },
    )?;
    Ok(custom.add_to(stages, config))
}

/// A running MTA: listeners bound, queue open, delivery running.
#[derive(Debug)]
pub struct Mta {
    addrs: Vec<(ListenerMode, std::net::SocketAddr)>,
    server_stats: Arc<smtp_server::ServerStats>,
    queue: Queue,
    config: Config,
    reload: Reload,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Mta {
    /// Opens the queue, binds the listeners and starts serving and delivering, with the
    /// built-in filters ([`MtaBuilder`] adds yours).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, None, MtaBuilder::new()).await
    }

    /// [`Mta::start`] for a configuration read from `path`, which a reload reads again.
    pub async fn start_from(config: Config, path: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_with(config, path, MtaBuilder::new()).await
    }

    /// [`Mta::start_from`] with the filters of `custom`.
    ///
    /// The order matters when started as root with `user` set: the listening sockets
    /// (SMTP and metrics) are bound first, then the process becomes that user, and
    /// only then opens the queue and reads certificates and keys.
    async fn start_with(
        config: Config,
        path: Option<PathBuf>,
        custom: MtaBuilder,
    ) -> anyhow::Result<Self> {
        let queue_settings = queue_config(&config);
        let backlog = config
            .limits
            .listen_backlog
            .unwrap_or(Limits::default().listen_backlog);
        let bound = Server::listen(&listener_configs(&config), backlog)?;
        let metrics = match &config.metrics {
            Some(m) => Some(crate::metrics::bind(m.address).await?),
            None => None,
        };
        #[cfg(unix)]
        give_up_root(&config)?;
        let counters = Counters {
            tls_rpt: crate::tlsrpt::Settings::from_config(&config)
                .map(|s| Arc::new(crate::tlsrpt::Aggregator::open(s))),
            ..Counters::default()
        };
        let queue = Queue::open(queue_settings.clone()).with_context(|| {
            let path = config.queue.path.display();
            match &config.user {
                // The usual cause: a directory made by root before `user` was set.
                Some(user) => format!(
                    "cannot open the queue at {path} as user {user} \
                     (it must belong to that user: chown -R {user}: {path})"
                ),
                None => format!("cannot open the queue at {path}"),
            }
        })?;
        let Parts {
            server_config,
            stages,
            delivery,
            defences,
            notification_route,
        } = Parts::build(&config, &queue, &counters, &custom)?;
        counters.defences.commit(defences);
        queue.route_notifications(notification_route);
        let injected = Arc::new(std::sync::RwLock::new(stages.clone()));
        let tls_reporter = match &counters.tls_rpt {
            Some(aggregator) => Some(crate::tlsrpt::Reporter::new(
                Arc::clone(aggregator),
                resolver(&config)?,
                config.outbound.mta_sts_timeout,
                Arc::clone(&injected),
                Arc::clone(&outbound_config(&config)?.0.tls_configs.verified),
            )),
            None => None,
        };
        let max_message = server_config.limits.max_message_size;
        let server = Server::with_listeners(server_config, stages, bound)?;
        let addrs = server.local_addrs();
        let reload = Reload {
            path,
            server: server.reloader(),
            delivery: delivery.clone(),
            queue: queue.clone(),
            queue_config: queue_settings,
            metrics: config.metrics.as_ref().map(|m| m.address),
            user: config.user.clone(),
            sendmail_socket: config.sendmail.socket.clone(),
            counters: counters.clone(),
            injected: Arc::clone(&injected),
            custom,
        };
        let server_stats = server.stats();

        let (stop, stopped) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let queue_runner = queue.clone();
        let mut tasks = vec![
            tokio::spawn(server.run(wait(stopped.clone()))),
            tokio::spawn(async move { queue_runner.run(delivery, wait(stopped)).await }),
        ];
        if let Some(listener) = metrics {
            let sources = crate::metrics::Sources {
                server: Arc::clone(&server_stats),
                queue: queue.clone(),
                queue_path: config.queue.path.clone(),
                auth: Arc::clone(&counters.auth),
                dns: Arc::clone(&counters.dns),
                door_dns: Arc::clone(&counters.door_dns),
                defences: counters.defences.clone(),
                verify: Arc::clone(&counters.verify),
                shaping: Arc::clone(&counters.shaping),
                tls_rpt: counters.tls_rpt.clone(),
            };
            tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                sources,
                wait(stop.subscribe()),
            )));
        }
        if let Some(reporter) = tls_reporter {
            tasks.push(tokio::spawn(reporter.run(wait(stop.subscribe()))));
        }
        #[cfg(unix)]
        {
            let reloader = reload.clone();
            let hooks = crate::control::Hooks {
                reload: Some(Arc::new(move || {
                    reloader.reload().map_err(|e| format!("{e:#}"))
                })),
                stages: injected,
                max_message,
            };
            let mut sockets = vec![(
                crate::control::socket_path(&config.queue.path),
                crate::control::Access::Owner,
            )];
            if let Some(path) = &config.sendmail.socket {
                let access = crate::control::Access::Anyone {
                    max_connections: config.sendmail.max_connections,
                };
                sockets.push((path.clone(), access));
            }
            for (path, access) in sockets {
                let listener = crate::control::listen(&path, &access)?;
                tasks.push(tokio::spawn(crate::control::serve(
                    queue.clone(),
                    (listener, path),
                    access,
                    hooks.clone(),
                    wait(stop.subscribe()),
                )));
            }
        }
        Ok(Self {
            addrs,
            server_stats,
            queue,
            config,
            reload,
            stop,
            tasks,
        })
    }

    /// Where each listener listens (port 0 in the configuration is resolved here).
    pub fn addrs(&self) -> &[(ListenerMode, std::net::SocketAddr)] {
        &self.addrs
    }

    /// The address of the first listener of `mode`.
    pub fn addr(&self, mode: ListenerMode) -> Option<std::net::SocketAddr> {
        self.addrs.iter().find(|(m, _)| *m == mode).map(|(_, a)| *a)
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The SMTP server's counters.
    pub fn server_stats(&self) -> &smtp_server::ServerStats {
        &self.server_stats
    }

    /// The configuration it started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Prints where the MTA listens and where mail lands.
    pub fn print_banner(&self) {
        let config = &self.config;
        for (mode, address) in &self.addrs {
            let extra = match mode {
                ListenerMode::Relay => {
                    "port 25 rules: local domains, relay for logins and trusted networks"
                }
                ListenerMode::Submission => "submission: STARTTLS, then AUTH, then MAIL",
                ListenerMode::Smtps => "implicit TLS submission",
                ListenerMode::Lmtp => "LMTP: final delivery, one reply per recipient",
            };
            println!("mta: listening on {address} ({}; {extra})", mode.as_str());
        }
        match (&config.local.maildir, &config.local.lmtp) {
            (_, Some(lmtp)) => {
                println!(
                    "mta: local mail for {} goes to LMTP at {lmtp}",
                    config.local.domains.join(", ")
                );
            }
            (_, None) if config.local.mbox.is_some() => {
                if let Some(root) = &config.local.mbox {
                    for d in &config.local.domains {
                        println!(
                            "mta: mail for <user>@{d} is appended to the mbox {}/{d}/<user>",
                            root.display()
                        );
                    }
                }
            }
            (Some(root), None) => {
                for d in &config.local.domains {
                    println!(
                        "mta: mail for <user>@{d} lands in {}/{d}/<user>/new/",
                        root.display()
                    );
                }
            }
            (None, None) => {}
        }
        println!(
            "mta: queue in {} ({} messages waiting)",
            config.queue.path.display(),
            self.queue.len()
        );
    }

    /// Stops accepting, lets transactions in flight finish, stops delivering, closes
    /// the outbound connections kept for reuse (with QUIT), and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let defences = self.reload.counters.defences.clone();
        let _ = tokio::task::spawn_blocking(move || defences.save()).await;
        self.reload.delivery.close_idle().await;
    }
}

/// Remote delivery: MX routing (or the relay) and the SMTP client settings.
fn remote_delivery(
    config: &Config,
    resolver: MxResolver,
    forwarding: Option<crate::aliases::Forwarding>,
    shaping_stats: &Arc<crate::delivery::ShapingStats>,
) -> anyhow::Result<Remote> {
    let o = &config.outbound;
    let (outbound, relay) = outbound_config(config)?;
    // DANE (RFC 7672): the validating resolver, asked once per MX host.
    let dane = match o.dane {
        crate::config::Dane::On => Some(dns_mx::DaneResolver::new(dns_mx::DaneConfig {
            resolver: o.dane_resolver,
            timeout: o.dane_timeout,
        })?),
        crate::config::Dane::Off => None,
    };
    Ok(Remote::new(
        resolver,
        RemoteConfig {
            outbound,
            relay,
            max_per_destination: o.max_per_destination,
            max_messages_per_connection: o.max_messages_per_connection,
            idle_timeout: o.idle_timeout,
            forwarding,
            mta_sts: (o.mta_sts == crate::config::MtaSts::On).then(|| crate::delivery::StsConfig {
                cache_dir: o
                    .mta_sts_cache
                    .clone()
                    .unwrap_or_else(|| config.queue.path.join("mta-sts")),
                timeout: o.mta_sts_timeout,
                port: o.mta_sts_port,
            }),
            dane,
            shaping: crate::delivery::ShapingConfig {
                backoff: o.backoff,
                backoff_max: o.backoff_max,
            },
            shaping_stats: Arc::clone(shaping_stats),
            priority_max_wait: priority_max_wait(config),
            destinations: o.destination.iter().map(destination_policy).collect(),
            sender_pools: o
                .sender_source
                .iter()
                .map(|s| crate::delivery::SenderPool {
                    domain: s.domain.clone(),
                    sources: s
                        .addresses
                        .iter()
                        .map(|a| crate::delivery::Source {
                            address: a.address(),
                            helo: a.helo().or(s.helo.as_deref()).map(str::to_owned),
                        })
                        .collect(),
                })
                .collect(),
            source: o.source.as_ref().map(source_address),
        },
    ))
}

/// `[[outbound.destination]]` as remote delivery takes it.
fn destination_policy(d: &crate::config::DestinationPolicy) -> crate::delivery::DestinationPolicy {
    // `mta check-config` refuses an entry with both or neither of `match` and `mx`.
    let (pattern, on) = match (&d.pattern, &d.mx) {
        (Some(domain), _) => (domain.clone(), crate::delivery::MatchOn::Domain),
        (None, Some(mx)) => (mx.clone(), crate::delivery::MatchOn::MxHost),
        (None, None) => (String::new(), crate::delivery::MatchOn::Domain),
    };
    crate::delivery::DestinationPolicy {
        pattern,
        on,
        tls: d.tls.map(Into::into),
        tls_name: d.tls_name.clone(),
        port: d.port,
        relay: d.relay.as_ref().map(|r| (r.host.clone(), r.port)),
        max_connections: d.max_connections,
        max_messages_per_minute: d.max_messages_per_minute,
        source: d.source.as_ref().map(source_address),
        helo: d.helo.clone(),
    }
}

/// An `[outbound]` source address as remote delivery takes it.
fn source_address(s: &crate::config::SourceAddress) -> crate::delivery::Source {
    crate::delivery::Source {
        address: s.address(),
        helo: s.helo().map(str::to_owned),
    }
}

/// For `mta check-config`: with a relay login configured, whether the relay's
/// certificate verifies for its name (or is pinned in `ca_file`), which the login needs.
/// Connects to the relay (10 s at most) and logs in nowhere; `None` when all is well.
pub async fn check_relay_certificate(config: &Config) -> Option<String> {
    let o = &config.outbound;
    o.relay_username.as_ref()?;
    let (mut outbound, relay) = match outbound_config(config) {
        Ok((outbound, Some(relay))) => (outbound, relay),
        Ok((_, None)) => return None,
        Err(e) => return Some(format!("{e:#}")),
    };
    let name = format!("[outbound] relay {}:{}", relay.host, outbound.port);
    // What a delivery does, up to the login: verified TLS, and no login sent.
    outbound.auth = None;
    outbound.tls = smtp_client::TlsPolicy::Required;
    outbound.connect_timeout = std::time::Duration::from_secs(5);
    let probe = async {
        let resolver = MxResolver::new(MxConfig {
            nameservers: config.dns.nameservers.clone(),
            ..MxConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let host = resolver
            .host(&relay.host)
            .await
            .map_err(|e| e.to_string())?;
        smtp_client::Session::open(&relay.host, &host.addresses, &outbound)
            .await
            .map_err(|e| match e {
                smtp_client::ClientError::Tls {
                    source: Some(why), ..
                } => format!(
                    "{name}: its certificate does not verify ({why}): the login is not sent \
                     and remote mail waits; if it is self-signed, pin it by putting that \
                     certificate in [outbound] ca_file"
                ),
                tls @ smtp_client::ClientError::Tls { .. } => {
                    format!("{name}: {tls}: the login is not sent and remote mail waits")
                }
                other => format!("{name}: cannot check its certificate: {other}"),
            })
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), probe).await {
        Ok(Ok(session)) => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), session.quit()).await;
            None
        }
        Ok(Err(text)) => Some(text),
        Err(_) => Some(format!(
            "{name}: cannot check its certificate: no answer in 10 s"
        )),
    }
}

/// The SMTP client settings, and the relay host when there is one.
fn outbound_config(config: &Config) -> anyhow::Result<(OutboundConfig, Option<Relay>)> {
    let o = &config.outbound;
    let extra_roots = match &o.ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .with_context(|| format!("[outbound] ca_file {}", path.display()))?
        }
        None => Vec::new(),
    };
    let tls_configs = TlsConfigs::new(extra_roots)?;
    let mut outbound = OutboundConfig::new(&config.hostname, tls_configs);
    outbound.port = o.port;
    outbound.tls = o.tls.into();
    let relay = o.relay.as_ref().map(|relay| {
        outbound.port = relay.port;
        outbound.implicit_tls = o.relay_tls == crate::config::RelayTls::Implicit;
        if let (Some(user), Some(pass)) = (&o.relay_username, &o.relay_password) {
            outbound.auth = Some((user.clone(), pass.clone()));
        }
        Relay {
            host: relay.host.clone(),
        }
    });
    Ok((outbound, relay))
}

pub(crate) fn queue_config(config: &Config) -> QueueConfig {
    let q = &config.queue;
    QueueConfig {
        path: q.path.clone(),
        backend: q.backend.into(),
        retry_intervals: q.retry_intervals.clone(),
        max_age: q.max_age,
        max_concurrent_deliveries: q.max_concurrent_deliveries,
        hostname: config.hostname.clone(),
        delay_warning: q.delay_warning,
        priority_scheduling: q.honour_mt_priority,
        priority_max_wait: priority_max_wait(config),
        ..QueueConfig::default()
    }
}

/// `[queue] priority_max_wait`, for the queue and the destinations' slots alike
/// (`None` for "0s").
fn priority_max_wait(config: &Config) -> Option<std::time::Duration> {
    let wait = config.queue.priority_max_wait;
    (!wait.is_zero()).then_some(wait)
}

/// The `[[listener]]`s.
fn listener_configs(config: &Config) -> Vec<ListenerConfig> {
    config
        .listeners
        .iter()
        .map(|l| ListenerConfig {
            address: l.address,
            mode: l.mode.into(),
            proxy: l.proxy_protocol.as_ref().map(Into::into),
        })
        .collect()
}

/// The server's settings; content of large messages is spilled into the queue's
/// incoming directory, from where the queue takes the files over without copying them.
fn server_config(
    config: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    queue: &Queue,
) -> anyhow::Result<ServerConfig> {
    let l = &config.limits;
    let d = Limits::default();
    let limits = Limits {
        max_message_size: l.max_message_size.unwrap_or(d.max_message_size),
        max_message_memory: l.max_message_memory.unwrap_or(d.max_message_memory),
        max_total_message_memory: l
            .max_total_message_memory
            .unwrap_or(d.max_total_message_memory),
        max_recipients: l.max_recipients.unwrap_or(d.max_recipients),
        max_line_length: l.max_line_length.unwrap_or(d.max_line_length),
        max_errors: l.max_errors.unwrap_or(d.max_errors),
        max_junk_commands: l.max_junk_commands.unwrap_or(d.max_junk_commands),
        max_auth_failures: l.max_auth_failures.unwrap_or(d.max_auth_failures),
        command_timeout: l.command_timeout.unwrap_or(d.command_timeout),
        data_timeout: l.data_timeout.unwrap_or(d.data_timeout),
        min_data_rate: l.min_data_rate.unwrap_or(d.min_data_rate),
        tls_handshake_timeout: l.tls_handshake_timeout.unwrap_or(d.tls_handshake_timeout),
        max_session_duration: l.max_session_duration.unwrap_or(d.max_session_duration),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        listen_backlog: l.listen_backlog.unwrap_or(d.listen_backlog),
        ..d
    };
    Ok(ServerConfig {
        hostname: config.hostname.clone(),
        listeners: listener_configs(config),
        tls,
        limits,
        bare_line_endings: l.bare_line_endings.into(),
        nul_bytes: l.nul_bytes.into(),
        auth: !config.accounts.is_empty(),
        spill: Some(smtp_server::SpillConfig {
            dir: queue.incoming_dir(),
            reserve: Queue::SPILL_RESERVE,
        }),
        early_talkers: config.early_talkers.settings(),
    })
}

/// The middleware chain: the built-in policy as layers around the queue.
///
/// At connect, the rate limits come first (a client over its connection rate is closed
/// before anything else is done for it), then the reverse-DNS and DNS blocklist lookups
/// start, in the background. At HELO/EHLO, the HELO checks (`[helo_checks]`) come
/// before the milters, so that a name they refuse costs no milter a question. At AUTH,
/// the failed-login lockout wraps the password check (it counts its refusals). At MAIL
/// FROM, the rate limits, then the blocklists' domain lookups, then SPF. At RCPT, after
/// the relay policy (always first): the DNS blocklists (`554 5.7.1`), reverse DNS
/// (`450 4.7.25`), the rate limits (which see the answers of what follows, to count
/// refused recipients), the local-recipient check, recipient verification against the
/// LMTP server (`crate::verify`), greylisting (so that unknown users
/// are refused at once, never greylisted), then the policy services. A message passes
/// the hop limit, gets a missing `Date:` and `Message-ID:` when it comes from a login,
/// then sender authentication (which adds `Authentication-Results`) and the blocklists'
/// `X-DNSBL`, then gets its `Received:` (on top), then meets the configured hooks
/// (milters, rspamd) and, from a login, gets its DKIM signature. Mail handed in on this
/// machine (`sendmail`, the control socket) skips the rate limits.
#[allow(clippy::too_many_arguments)]
fn stages(
    config: &Config,
    local_domains: &DomainSet,
    mailboxes: Option<&Arc<std::collections::HashSet<String>>>,
    aliases: Option<&Arc<crate::aliases::Aliases>>,
    resolver: &MxResolver,
    queue: Queue,
    auth_stats: &Arc<auth_checks::AuthStats>,
    door: &Door<'_>,
) -> anyhow::Result<Stages> {
    let signing = dkim_signing(config)?;
    let trusted = config.relay.trusted_networks.clone();
    let accounts = Accounts::new(
        config
            .accounts
            .iter()
            .map(|a| (a.username.as_str(), a.password.as_str())),
    );
    // One verifier: the sender checks, the blocklists and reverse DNS share its
    // resolver, negative cache and (per message) its DNS time budget.
    let mut verifier = Verifier::new(resolver.resolver().clone(), &config.hostname);
    if !config.dns.nameservers.is_empty() {
        // SPF asks these itself for the one TXT answer hickory cannot decode.
        verifier = verifier.with_nameservers(config.dns.nameservers.clone());
    }
    let budget = config.auth_checks.time_budget;
    let mut checks = AuthChecks::new(verifier.clone(), config.auth_checks)
        .skip_networks(trusted.clone())
        .count_into(Arc::clone(auth_stats));
    if let Some(k) = &config.arc_seal {
        let sealer = ArcSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
            .with_context(|| format!("[arc_seal] {} (selector {})", k.domain, k.selector))?;
        checks = checks.arc_sealer(sealer, local_domains.clone());
    }
    let dnsbl =
        (config.dnsbl.mode != DefenceMode::Off && !config.dnsbl.lists.is_empty()).then(|| {
            DnsblFilter::new(&verifier, &config.dnsbl.settings())
                .time_budget(budget)
                .skip_networks(trusted.clone())
                .count_into(Arc::clone(door.dns))
        });
    let rdns = (config.reverse_dns.mode != DefenceMode::Off).then(|| {
        RdnsFilter::new(&verifier, config.reverse_dns.settings())
            .time_budget(budget)
            .skip_networks(trusted.clone())
            .count_into(Arc::clone(door.dns))
    });
    // Aliases expand last: the filters before them see the recipients as the client
    // gave them (as Postfix's cleanup expands after smtpd).
    let mut enqueue = Stages::new(Enqueue {
        queue,
        priorities: Arc::new(Priorities::from_config(config)),
    });
    if let Some(aliases) = &aliases {
        enqueue = enqueue.data_layer(filter(aliases.data_check()));
    }
    // Mailbox quotas: at the end of DATA, on the message as it will be stored, for the
    // recipients the client gave (an alias's full member is deferred at delivery, then
    // bounced, rather than refused for the whole alias: docs/mailboxes.md).
    let quota =
        crate::quota_check::QuotaCheck::new(config, local_domains.clone(), mailboxes.cloned());
    if let Some(quota) = &quota {
        enqueue = enqueue.data_layer(filter_async(quota.clone()));
    }
    let signed = enqueue.data_layer(filter(signing));
    let mut stages = crate::hooks::add(signed, config)?
        .data_layer(filter(Received::new(&config.hostname)))
        .data_layer(checks.data_layer());
    if let Some(dnsbl) = &dnsbl {
        // Added after the checks: its header goes under Authentication-Results.
        stages = stages.data_layer(dnsbl.data_layer());
    }
    stages = stages
        .data_layer(filter(SubmittedHeaders::new(&config.hostname)))
        .data_layer(filter(NotifyPolicy::new(trusted.clone())))
        .data_layer(filter(HopLimit::new(config.limits.max_hops.unwrap_or(50))))
        .mail_layer(checks.mail_layer())
        .auth_layer(filter_async(PasswordCheck::new(accounts)));
    if config.helo_checks.mode != DefenceMode::Off {
        // Added after the hooks, so it runs before a milter's helo stage.
        let helo = config.helo_checks.filter(&config.hostname, trusted.clone());
        stages = stages.ehlo_layer(filter(helo));
    }
    // The last added runs first: greylisting after the local-recipient check.
    if let Some(greylist) = door.greylist {
        stages = stages.rcpt_layer(filter(greylist.clone()));
    }
    // A full mailbox (452 4.2.2): after the recipient checks, before greylisting.
    if let Some(quota) = quota {
        stages = stages
            .rcpt_layer(filter_async(quota))
            .mail_layer(filter(crate::quota_check::RememberSize));
    }
    // Recipient verification against the LMTP server: after the local-recipient list
    // (it asks only about what the list lets through), before greylisting.
    if let Some(verifier) = crate::verify::LmtpVerifier::from_config(config, aliases, door.verify) {
        stages = stages.rcpt_layer(filter_async(verifier));
    }
    if let Some(aliases) = &aliases {
        // With [aliases]: the alias check, which answers as LocalRecipients otherwise.
        stages = stages.rcpt_layer(filter(aliases.rcpt_check()));
    } else if let Some(mailboxes) = mailboxes {
        stages = stages.rcpt_layer(filter(
            LocalRecipients::new(local_domains.clone(), mailboxes.iter())
                .recipient_delimiter(config.local.recipient_delimiter.as_str()),
        ));
    }
    if let Some(dnsbl) = &dnsbl {
        stages = stages
            .connect_layer(dnsbl.connect_layer())
            .mail_layer(dnsbl.mail_layer());
    }
    if let Some(rdns) = &rdns {
        stages = stages.connect_layer(rdns.connect_layer());
    }
    if let Some(rate) = door.rate {
        // Outside the password check, the local-recipient check and greylisting, to
        // count what they refuse; outermost at connect and MAIL.
        stages = stages
            .connect_layer(rate.connect_layer())
            .auth_layer(rate.auth_layer())
            .mail_layer(rate.mail_layer())
            .rcpt_layer(rate.rcpt_layer());
    }
    if let Some(rdns) = &rdns {
        stages = stages.rcpt_layer(rdns.rcpt_layer());
    }
    if let Some(dnsbl) = &dnsbl {
        stages = stages.rcpt_layer(dnsbl.rcpt_layer());
    }
    // The dictionary-attack defence stands before the relay policy, so that relaying
    // refusals count as refused recipients too.
    let policy = filter(RelayPolicy::new(local_domains.clone(), trusted));
    let counted = tower::util::option_layer(door.rate.map(RateLimits::relay_layer));
    Ok(stages.relay_policy(tower::layer::util::Stack::new(policy, counted)))
}

/// The queue id of a message `Enqueue` queued, left in its transaction's notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedAs(pub mail_queue::QueueId);

/// The end of the data stage: make the message durable, then say `250`.
#[derive(Clone, Debug)]
struct Enqueue {
    queue: Queue,
    priorities: Arc<Priorities>,
}

impl tower::Service<DataRequest> for Enqueue {
    type Response = Decision;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: DataRequest) -> Self::Future {
        let queue = self.queue.clone();
        let priorities = Arc::clone(&self.priorities);
        Box::pin(async move {
            let session = &request.session;
            let source = match &session.authenticated {
                Some(user) if session.protocol == SessionInfo::LOCAL => format!("local {user}"),
                _ => format!("[{}]", session.peer.ip()),
            };
            let mut message = NewMessage::from_envelope(&request.envelope, source);
            message.params.priority = priorities.of(session, request.envelope.params.mt_priority);
            let DataRequest {
                added_headers,
                body,
                notes,
                ..
            } = request;
            // A large message's spill file becomes its spool segment; a head too large
            // for the room left in it (never from our own filters) is joined instead.
            let enqueued = match body.spilled() {
                Some((file, offset)) if (added_headers.len() as u64) < Queue::SPILL_RESERVE / 2 => {
                    let (file, content) = (file.to_owned(), body.bytes().clone());
                    queue
                        .enqueue_spilled(message, added_headers, content, file, offset)
                        .await
                }
                _ => {
                    let parts = vec![Bytes::from(added_headers), body.bytes().clone()];
                    queue.enqueue_parts(message, parts).await
                }
            };
            match enqueued {
                Ok(id) => {
                    tracing::Span::current().record("queue_id", tracing::field::display(id));
                    notes.insert(QueuedAs(id));
                    Ok(Decision::from_reply(Reply::new(
                        ReplyCode::OK,
                        EnhancedStatus::OK,
                        format!("Ok: queued as {id}"),
                    )))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot queue a message");
                    Ok(Decision::from_reply(e.reply()))
                }
            }
        })
    }
}

/// The priority a message is queued with (RFC 6710): what a login or a trusted network
/// asks for with `MT-PRIORITY`, else the login's `[[account]] priority`, else the
/// listener's `[[listener]] priority`. Anyone else may ask for a lower priority than
/// the listener's, never a higher one (RFC 6710 §5 lets a server lower it).
#[derive(Debug, Default)]
struct Priorities {
    /// `[[listener]]` addresses with a priority other than 0.
    listeners: Vec<(std::net::SocketAddr, i8)>,
    /// `[[account]]` logins with a priority other than 0.
    accounts: std::collections::HashMap<String, i8>,
    trusted: Vec<smtp_server::filters::IpNetwork>,
}

impl Priorities {
    fn from_config(config: &Config) -> Self {
        Self {
            listeners: config
                .listeners
                .iter()
                .filter(|l| l.priority != 0)
                .map(|l| (l.address, l.priority))
                .collect(),
            accounts: config
                .accounts
                .iter()
                .filter(|a| a.priority != 0)
                .map(|a| (a.username.clone(), a.priority))
                .collect(),
            trusted: config.relay.trusted_networks.clone(),
        }
    }

    /// The priority of a message of `session` whose MAIL FROM had `asked`.
    fn of(&self, session: &SessionInfo, asked: Option<i8>) -> i8 {
        let listener = self
            .listeners
            .iter()
            .find(|(a, _)| *a == session.local)
            .or_else(|| {
                // A listener on the unspecified address (`0.0.0.0:587`), by its port.
                self.listeners
                    .iter()
                    .find(|(a, _)| a.ip().is_unspecified() && a.port() == session.local.port())
            })
            .map_or(0, |&(_, p)| p);
        let trusted = session.authenticated.is_some()
            || self.trusted.iter().any(|n| n.contains(session.peer.ip()));
        let default = session
            .authenticated
            .as_ref()
            .and_then(|user| self.accounts.get(user).copied())
            .unwrap_or(listener);
        let priority = match asked {
            Some(asked) if trusted => asked,
            Some(asked) => asked.min(default),
            None => default,
        };
        priority.clamp(-9, 9)
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    /// `[queue] priority_max_wait`: 15 minutes by default, as written, `"0s"` off, for
    /// the queue and the destinations' slots alike.
    #[test]
    fn priority_max_wait_is_read_from_the_queue_section() {
        let wait = |queue: &str| {
            let text = format!(
                "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
                 mode = \"relay\"\n[queue]\n{queue}"
            );
            let config = Config::parse(&text).unwrap();
            assert_eq!(
                priority_max_wait(&config),
                queue_config(&config).priority_max_wait
            );
            priority_max_wait(&config)
        };
        assert_eq!(wait(""), Some(std::time::Duration::from_secs(900)));
        assert_eq!(
            wait("priority_max_wait = \"2m\"\n"),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(wait("priority_max_wait = \"0s\"\n"), None);
    }

    fn priorities() -> Priorities {
        Priorities {
            listeners: vec![
                ("127.0.0.1:2525".parse().unwrap(), 3),
                ("0.0.0.0:587".parse().unwrap(), 2),
            ],
            accounts: [("bulk@mx.test".to_owned(), -4)].into_iter().collect(),
            trusted: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    fn session(peer: &str, local: &str, login: Option<&str>) -> SessionInfo {
        let mut session = SessionInfo::local("nobody");
        session.peer = peer.parse().unwrap();
        session.local = local.parse().unwrap();
        session.protocol = "ESMTP";
        session.authenticated = login.map(str::to_owned);
        session
    }

    #[test]
    fn untrusted_clients_may_only_lower_their_listeners_priority() {
        let p = priorities();
        let stranger = session("198.51.100.7:4000", "127.0.0.1:2525", None);
        assert_eq!(p.of(&stranger, None), 3);
        assert_eq!(p.of(&stranger, Some(9)), 3);
        assert_eq!(p.of(&stranger, Some(-2)), -2);
        // A listener on every address, found by its port; none: 0.
        let elsewhere = session("198.51.100.7:4000", "10.0.0.1:587", None);
        assert_eq!(p.of(&elsewhere, Some(5)), 2);
        let unlisted = session("198.51.100.7:4000", "10.0.0.1:25", None);
        assert_eq!(p.of(&unlisted, Some(5)), 0);
        assert_eq!(p.of(&unlisted, Some(-9)), -9);
    }

    #[test]
    fn logins_and_trusted_networks_get_what_they_ask_for() {
        let p = priorities();
        let trusted = session("192.0.2.9:4000", "127.0.0.1:2525", None);
        assert_eq!(p.of(&trusted, Some(9)), 9);
        assert_eq!(p.of(&trusted, None), 3);
        let bulk = session("198.51.100.7:4000", "127.0.0.1:2525", Some("bulk@mx.test"));
        assert_eq!(p.of(&bulk, None), -4);
        assert_eq!(p.of(&bulk, Some(6)), 6);
        let ann = session("198.51.100.7:4000", "127.0.0.1:2525", Some("ann@mx.test"));
        assert_eq!(p.of(&ann, None), 3);
        // Mail submitted on this machine (`sendmail`) is a login on no listener.
        assert_eq!(p.of(&SessionInfo::local("userid 1000"), Some(7)), 7);
        assert_eq!(p.of(&SessionInfo::local("userid 1000"), None), 0);
    }
}
