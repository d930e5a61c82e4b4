//! HELO checks: the name a client gives in HELO or EHLO, judged the way Postfix's
//! `reject_invalid_helo_hostname`, `reject_non_fqdn_helo_hostname` and a "you are not
//! me" check do.

use std::net::IpAddr;

use smtp_proto::{Domain, EnhancedStatus, HeloName};
use tracing::info;

use super::IpNetwork;
use crate::config::{FilterMode, ListenerMode};
use crate::{Check, Decision, EhloRequest};

/// What is wrong with a HELO name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeloProblem {
    /// Neither a domain with a dot nor an address literal (`localhost`, `my_pc`):
    /// `501 5.5.2`.
    Syntax,
    /// Our own host name, or one of our addresses (as a literal or bare): `550 5.7.1`.
    OwnName,
    /// An IP address without brackets (`192.0.2.1` for `[192.0.2.1]`): `501 5.5.2`.
    BareIp,
}

impl HeloProblem {
    /// Every problem, in the order of the counters.
    pub const ALL: [Self; 3] = [Self::Syntax, Self::OwnName, Self::BareIp];

    /// Its name in logs and metrics: `syntax`, `own_name`, `bare_ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::OwnName => "own_name",
            Self::BareIp => "bare_ip",
        }
    }

    /// The refusal it earns in enforce mode.
    pub fn refusal(self) -> Decision {
        match self {
            Self::Syntax => Decision::reject::<501>(
                EnhancedStatus::SYNTAX_ERROR,
                "HELO name rejected: give a fully-qualified domain name or an address literal such as [192.0.2.1]",
            ),
            Self::OwnName => Decision::reject::<550>(
                EnhancedStatus::NOT_AUTHORIZED,
                "HELO name rejected: that is our own name or address, you are not me",
            ),
            Self::BareIp => Decision::reject::<501>(
                EnhancedStatus::SYNTAX_ERROR,
                "HELO name rejected: write an address as a literal in brackets, such as [192.0.2.1]",
            ),
        }
    }
}

/// The verdict of the HELO checks on the last HELO/EHLO of a connection, left in
/// [`SessionInfo::connection`](crate::SessionInfo::connection) for later filters (a
/// data-stage filter may add a header in tag mode). `problem` is `None` when nothing was
/// found, or when the checks did not run (the server leaves that before each HELO, and
/// counts what the checks leave in `smtp_helo_checks_total`).
///
/// ```
/// use smtp_server::filters::HeloFinding;
/// # let session = smtp_server::SessionInfo::local("x");
/// if let Some(HeloFinding { problem: Some(p), refused: false }) = session.connection.get::<HeloFinding>() {
///     println!("tagged: {}", p.as_str());
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeloFinding {
    /// What was wrong.
    pub problem: Option<HeloProblem>,
    /// Whether the name was refused (enforce mode).
    pub refused: bool,
}

/// The ehlo-stage HELO checks: the name must be a domain with a dot or an address
/// literal ([`HeloProblem::Syntax`], `501 5.5.2`), not an IP address without brackets
/// ([`HeloProblem::BareIp`], `501 5.5.2`), and not our own name or address
/// ([`HeloProblem::OwnName`], `550 5.7.1`; the address the client connected to is
/// always ours).
///
/// `Enforce` refuses the HELO (the client may try another); `Tag` logs and counts, and
/// lets it go on; both leave a [`HeloFinding`] in the connection's notes. Applied on
/// relay listeners only by default: a client of a submission listener logs in later, and
/// its HELO (a laptop's bare host name, often) says nothing about it. Clients of
/// `trusted` networks and logins are never checked.
///
/// ```
/// use smtp_server::filters::HeloChecks;
/// use smtp_server::{FilterMode, Stages, filter};
/// # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
/// let helo = HeloChecks {
///     mode: FilterMode::Enforce,
///     own_addresses: vec!["192.0.2.25".parse().unwrap()],
///     trusted: vec!["127.0.0.0/8".parse().unwrap()],
///     ..HeloChecks::new("mx.example.test")
/// };
/// let stages = Stages::new(sink).ehlo_layer(filter(helo));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeloChecks {
    /// Off, tag (default) or enforce.
    pub mode: FilterMode,
    /// Our host names (default: the one given to [`HeloChecks::new`]).
    pub own_names: Vec<String>,
    /// Our addresses, besides the one each client connected to (default none).
    pub own_addresses: Vec<IpAddr>,
    /// The kinds of listener checked (default: relay).
    pub listeners: Vec<ListenerMode>,
    /// Networks whose clients are not checked (default none).
    pub trusted: Vec<IpNetwork>,
}

impl HeloChecks {
    /// The checks for a server named `hostname`, in tag mode.
    pub fn new(hostname: &str) -> Self {
        Self {
            mode: FilterMode::Tag,
            own_names: vec![hostname.to_owned()],
            own_addresses: Vec::new(),
            listeners: vec![ListenerMode::Relay],
            trusted: Vec::new(),
        }
    }

    /// What is wrong with `name` given on a connection to `local`, if anything.
    ///
    /// ```
    /// use smtp_server::filters::{HeloChecks, HeloProblem};
    /// use smtp_proto::HeloName;
    /// let checks = HeloChecks::new("mx.example.test");
    /// let local = "192.0.2.25".parse().unwrap();
    /// let judge = |name: &str| checks.problem(&HeloName::parse(name).unwrap(), local);
    /// assert_eq!(judge("mail.example.net"), None);
    /// assert_eq!(judge("[198.51.100.7]"), None);
    /// assert_eq!(judge("localhost"), Some(HeloProblem::Syntax));
    /// assert_eq!(judge("MX.example.test"), Some(HeloProblem::OwnName));
    /// assert_eq!(judge("[192.0.2.25]"), Some(HeloProblem::OwnName));
    /// assert_eq!(judge("198.51.100.7"), Some(HeloProblem::BareIp));
    /// ```
    pub fn problem(&self, name: &HeloName, local: IpAddr) -> Option<HeloProblem> {
        let ours = |ip: IpAddr| {
            let ip = canonical(ip);
            ip == canonical(local) || self.own_addresses.iter().any(|a| canonical(*a) == ip)
        };
        match name {
            HeloName::Address(ip) => ours(*ip).then_some(HeloProblem::OwnName),
            HeloName::Domain(_) | HeloName::Other(_) => {
                let text = name.to_text();
                let text = text.trim_end_matches('.');
                if let Ok(ip) = text.parse::<IpAddr>() {
                    return Some(if ours(ip) {
                        HeloProblem::OwnName
                    } else {
                        HeloProblem::BareIp
                    });
                }
                if self
                    .own_names
                    .iter()
                    .any(|own| own.trim_end_matches('.').eq_ignore_ascii_case(text))
                {
                    return Some(HeloProblem::OwnName);
                }
                // A domain with a dot (a final dot, for the root, is forgiven).
                let fqdn = Domain::parse(text).is_ok() && text.contains('.');
                (!fqdn).then_some(HeloProblem::Syntax)
            }
        }
    }
}

impl Check<EhloRequest> for HeloChecks {
    fn check(&self, req: &mut EhloRequest) -> Option<Decision> {
        let session = &req.session;
        if self.mode == FilterMode::Off
            || !self.listeners.contains(&session.mode)
            || session.authenticated.is_some()
            || self.trusted.iter().any(|n| n.contains(session.peer.ip()))
        {
            return None;
        }
        let problem = self.problem(&req.name, session.local.ip())?;
        let refused = self.mode == FilterMode::Enforce;
        session.connection.insert(HeloFinding {
            problem: Some(problem),
            refused,
        });
        info!(
            helo = %req.name,
            check = problem.as_str(),
            action = if refused { "rejected" } else { "tagged" },
            "HELO check"
        );
        refused.then(|| problem.refusal())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let checks = HeloChecks {
            own_names: vec!["mx.example.test".into(), "mail.example.test.".into()],
            own_addresses: vec![
                "2001:db8::25".parse().unwrap(),
                "192.0.2.26".parse().unwrap(),
            ],
            ..HeloChecks::new("unused")
        };
        let local: IpAddr = "::ffff:192.0.2.25".parse().unwrap();
        let judge = |name: &str| checks.problem(&HeloName::parse(name).unwrap(), local);
        for good in [
            "mail.example.net",
            "mail.example.net.",
            "[198.51.100.7]",
            "[IPv6:2001:db8::7]",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(judge(good), None, "{good}");
        }
        for (name, problem) in [
            ("localhost", HeloProblem::Syntax),
            ("x", HeloProblem::Syntax),
            ("my_pc", HeloProblem::Syntax),
            ("my_pc.example.net", HeloProblem::Syntax),
            ("[not an address]", HeloProblem::Syntax),
            ("MX.EXAMPLE.TEST", HeloProblem::OwnName),
            ("mail.example.test", HeloProblem::OwnName),
            ("mx.example.test.", HeloProblem::OwnName),
            ("[192.0.2.25]", HeloProblem::OwnName),
            ("192.0.2.25", HeloProblem::OwnName),
            ("[192.0.2.26]", HeloProblem::OwnName),
            ("[IPv6:2001:db8::25]", HeloProblem::OwnName),
            ("2001:db8::25", HeloProblem::OwnName),
            ("198.51.100.7", HeloProblem::BareIp),
            ("2001:db8::7", HeloProblem::BareIp),
        ] {
            assert_eq!(judge(name), Some(problem), "{name}");
        }
    }

    #[test]
    fn refusals() {
        let code = |p: HeloProblem| {
            let d = p.refusal();
            let r = d.reply().unwrap();
            format!("{} {}", r.code(), r.status().unwrap())
        };
        assert_eq!(code(HeloProblem::Syntax), "501 5.5.2");
        assert_eq!(code(HeloProblem::BareIp), "501 5.5.2");
        assert_eq!(code(HeloProblem::OwnName), "550 5.7.1");
    }
}
