//! `mta check-dns DOMAIN`: what an operator checks in DNS before going live, one line
//! per finding (`ok`, `warn` or `fail`, what was found, and the fix), or `--json`.
//!
//! ```text
//!  MX ─▶ each MX host: A/AAAA, not a CNAME, not an IP ──┬─▶ MTA-STS policy: each MX matches
//!                                                       └─▶ TLSA at _25._tcp.<mx>
//!  PTR (with --config: hostname ⇄ address ⇄ PTR)   SPF   DKIM (each configured selector)
//!  DMARC ─▶ BIMI (only meaningful at quarantine/reject)   MTA-STS TXT   TLS-RPT
//! ```
//!
//! With `--config`, the host name (the HELO name), the `[[dkim_key]]`s of the domain
//! and the public addresses of the listeners are checked too; without, what DNS alone
//! tells. Every DNS query and the HTTPS fetch end within `--timeout`; a timeout is a
//! warning. The exit code is 0 when nothing failed, 1 when something did, 2 when the
//! command could not run (a bad option or configuration).

pub(crate) mod dns;
mod records;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use rcgen::PublicKeyData;
use serde::Serialize;

use crate::config::{Config, ListenerMode, parse_duration};
use dns::{Dns, Failure};
use records::Verdict;
use smtp_client::mta_sts::{self, PolicyFields};

/// `mta check-dns` and its options.
#[derive(Args, Debug)]
pub struct CheckDnsArgs {
    /// The server's configuration file: adds the host name's PTR, the DKIM keys of the
    /// domain and the listeners' public addresses to the checks.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print one JSON array of `{check, status, found, fix}` objects instead of lines.
    #[arg(long)]
    pub json: bool,
    /// The nameserver to ask (`IP` or `IP:PORT`); default: the configuration's `[dns]
    /// nameservers`, else the system's (/etc/resolv.conf).
    #[arg(long, value_parser = parse_resolver)]
    pub resolver: Option<SocketAddr>,
    /// Time for each DNS query and for the MTA-STS policy fetch (`5s`).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Certificates (PEM) trusted besides the system's roots when fetching the MTA-STS
    /// policy: a private or test CA.
    #[arg(long, value_name = "FILE")]
    pub mta_sts_ca: Option<PathBuf>,
    /// The port of the MTA-STS policy server (443; another only for tests).
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    pub mta_sts_port: u16,
    /// The mail domain to check.
    pub domain: String,
}

/// How a finding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but something is missing or weak.
    Warn,
    /// Mail will be refused, lost or spoofable: fix before going live.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked (`MX`, `PTR`, `SPF`, `DKIM s1`, `DMARC`, `MTA-STS`,
    /// `MTA-STS policy`, `TLS-RPT`, `TLSA mx.example.org`, `BIMI`).
    pub check: String,
    /// How it stands.
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do (none when the status is ok).
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: impl Into<String>, verdict: Verdict) -> Self {
        Self {
            check: check.into(),
            status: verdict.status,
            found: verdict.found,
            fix: verdict.fix,
        }
    }
}

/// Runs the checks and prints the report; `Ok(true)` when nothing failed.
pub fn run(args: CheckDnsArgs) -> anyhow::Result<bool> {
    let domain = normalize(&args.domain)?;
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let nameservers = match (args.resolver, &config) {
        (Some(resolver), _) => vec![resolver],
        (None, Some(config)) => config.dns.nameservers.clone(),
        (None, None) => Vec::new(),
    };
    let mut extra_roots = Vec::new();
    if let Some(path) = &args.mta_sts_ca {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("--mta-sts-ca {}", path.display()))?
        {
            extra_roots.push(cert.with_context(|| format!("--mta-sts-ca {}", path.display()))?);
        }
        if extra_roots.is_empty() {
            anyhow::bail!("--mta-sts-ca {}: no certificate in it", path.display());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let findings = runtime.block_on(async {
        let dns = Dns::new(nameservers, args.timeout)?;
        let checker = Checker {
            dns,
            domain,
            config: config.as_ref(),
            timeout: args.timeout,
            extra_roots,
            https_port: args.mta_sts_port,
        };
        anyhow::Ok(checker.all().await)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    Ok(findings.iter().all(|f| f.status != Status::Fail))
}

/// The report as text: one line per finding, columns aligned.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        let line = format!("{:<4}  {:<width$}  {}", f.status.word(), f.check, f.found);
        out.push_str(&line);
        if let Some(fix) = &f.fix {
            out.push_str("  fix: ");
            out.push_str(fix);
        }
        out.push('\n');
    }
    out
}

/// The domain in lower-case ASCII (an internationalized one as its A-labels), without
/// a final dot.
fn normalize(domain: &str) -> anyhow::Result<String> {
    let trimmed = domain.trim().trim_end_matches('.');
    let name = hickory_resolver::proto::rr::Name::from_utf8(trimmed)
        .map_err(|_| anyhow::anyhow!("{domain:?} is not a domain name"))?;
    let ascii = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if !ascii.contains('.')
        || ascii.split('.').any(|l| {
            l.is_empty()
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        anyhow::bail!("{domain:?} is not a domain name");
    }
    Ok(ascii)
}

fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not IP or IP:PORT"))
}

struct Checker<'a> {
    dns: Dns,
    domain: String,
    config: Option<&'a Config>,
    timeout: Duration,
    /// Certificates trusted besides the system's for the MTA-STS policy server.
    extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    https_port: u16,
}

/// What the MX check learnt for the others: the MX hosts (none for a null MX or when
/// there are none).
struct Exchangers {
    hosts: Vec<String>,
}

impl Checker<'_> {
    async fn all(&self) -> Vec<Finding> {
        let (mx, exchangers) = self.mx().await;
        let dmarc_name = format!("_dmarc.{}", self.domain);
        let bimi_name = format!("default._bimi.{}", self.domain);
        let (ptr, spf, dkim, dmarc, sts, tls_rpt, tlsa, bimi_txt) = tokio::join!(
            self.ptr(),
            self.spf(),
            self.dkim(),
            self.dns.txt(&dmarc_name),
            self.mta_sts(&exchangers),
            self.tls_rpt(),
            self.tlsa(&exchangers),
            self.dns.txt(&bimi_name),
        );
        let (dmarc, policy) = match dmarc {
            Ok(records) => {
                let (verdict, policy) = records::dmarc(&self.domain, &records);
                (Finding::new("DMARC", verdict), policy)
            }
            Err(e) => (self.unanswered("DMARC", &e), None),
        };
        let bimi = match bimi_txt {
            Ok(records) => Finding::new("BIMI", records::bimi(&self.domain, &records, policy)),
            Err(e) => self.unanswered("BIMI", &e),
        };
        let mut all = mx;
        all.extend(ptr);
        all.push(spf);
        all.extend(dkim);
        all.push(dmarc);
        all.extend(sts);
        all.push(tls_rpt);
        all.extend(tlsa);
        all.push(bimi);
        all
    }

    /// A lookup that ended without an answer: a warning (a timeout, a server failure).
    fn unanswered(&self, check: &str, failure: &Failure) -> Finding {
        Finding::new(
            check,
            Verdict::warn(
                failure.to_string(),
                "check that the domain's nameservers answer (and retry)",
            ),
        )
    }

    /// MX present (or a null MX), each host with an address, none a CNAME or an IP.
    async fn mx(&self) -> (Vec<Finding>, Exchangers) {
        let domain = &self.domain;
        let mut none = Exchangers { hosts: Vec::new() };
        let publish = format!("publish an MX record: {domain}. IN MX 10 mx.{domain}.");
        let records = match self.dns.mx(domain).await {
            Ok(records) => records,
            Err(Failure::NoDomain) => {
                let verdict = Verdict::fail(
                    format!("{domain} does not exist (NXDOMAIN)"),
                    "check the spelling, the registration and the delegation of the domain",
                );
                return (vec![Finding::new("MX", verdict)], none);
            }
            Err(e) => return (vec![self.unanswered("MX", &e)], none),
        };
        if records.iter().any(|(_, host)| host.is_empty()) {
            let verdict = if records.len() == 1 {
                Verdict::ok("null MX (RFC 7505): the domain receives no mail")
            } else {
                Verdict::fail(
                    "a null MX beside other MX records (RFC 7505 §3)",
                    "remove the null MX (\"0 .\") or the other MX records",
                )
            };
            return (vec![Finding::new("MX", verdict)], none);
        }
        if records.is_empty() {
            let verdict = match self.dns.addresses(domain).await {
                Ok(addresses) if !addresses.is_empty() => Verdict::warn(
                    format!(
                        "no MX record: mail goes to the domain's own address ({})",
                        list(&addresses)
                    ),
                    publish,
                ),
                Ok(_) => Verdict::fail(
                    "no MX record and no address: no mail can reach the domain",
                    publish,
                ),
                Err(e) => Verdict::warn(format!("no MX record; its address: {e}"), publish),
            };
            return (vec![Finding::new("MX", verdict)], none);
        }
        let mut findings = Vec::new();
        for (preference, host) in &records {
            findings.push(Finding::new("MX", self.mx_host(*preference, host).await));
            none.hosts.push(host.clone());
        }
        (findings, none)
    }

    async fn mx_host(&self, preference: u16, host: &str) -> Verdict {
        let shown = format!("{preference} {host}");
        if host.parse::<IpAddr>().is_ok() {
            return Verdict::warn(
                format!("{shown}: an IP address, not a host name (RFC 5321 §5.1)"),
                format!("point the MX at a host name whose A record is {host}"),
            );
        }
        let (cname, addresses) = tokio::join!(self.dns.cname(host), self.dns.addresses(host));
        let addresses = match addresses {
            Ok(a) if a.is_empty() => {
                return Verdict::fail(
                    format!("{shown}: no A/AAAA record"),
                    format!("publish an A (and AAAA) record for {host}, or remove the MX"),
                );
            }
            Ok(a) => a,
            Err(e) => {
                return Verdict::warn(
                    format!("{shown}: its address: {e}"),
                    "check that the host's nameservers answer",
                );
            }
        };
        let shown = format!("{shown} → {}", list(&addresses));
        match cname {
            Ok(targets) if !targets.is_empty() => Verdict::warn(
                format!(
                    "{shown}: {host} is a CNAME for {} (RFC 2181 §10.3)",
                    targets.join(", ")
                ),
                format!("point the MX at the canonical name {}", targets.join(", ")),
            ),
            _ => Verdict::ok(shown),
        }
    }

    /// The host name resolves to addresses whose PTR names it (forward-confirmed
    /// reverse DNS), and so do the listeners' public addresses.
    async fn ptr(&self) -> Vec<Finding> {
        let Some(config) = self.config else {
            return vec![Finding::new(
                "PTR",
                Verdict::warn(
                    "not checked without --config (the host name, our HELO name, is there)",
                    "run with --config to check the PTR of the host name",
                ),
            )];
        };
        let hostname = config.hostname.trim_end_matches('.').to_ascii_lowercase();
        let forward = match self.dns.addresses(&hostname).await {
            Ok(a) => a,
            Err(e) => {
                return vec![self.unanswered("PTR", &e)];
            }
        };
        let listeners: Vec<IpAddr> = config
            .listeners
            .iter()
            .filter(|l| l.mode != ListenerMode::Lmtp)
            .map(|l| l.address.ip())
            .filter(|ip| public(*ip))
            .collect();
        let mut findings = Vec::new();
        if forward.is_empty() {
            findings.push(Finding::new(
                "PTR",
                Verdict::fail(
                    format!("{hostname} (hostname) has no A/AAAA record"),
                    format!("publish an A record for {hostname}: the address mail leaves from"),
                ),
            ));
        }
        for ip in &listeners {
            if !forward.contains(ip) && !forward.is_empty() {
                findings.push(Finding::new(
                    "PTR",
                    Verdict::warn(
                        format!(
                            "the listener address {ip} is not among {hostname}'s addresses ({})",
                            list(&forward)
                        ),
                        format!("add {ip} to {hostname}'s A/AAAA records"),
                    ),
                ));
            }
        }
        let mut addresses = forward.clone();
        for ip in listeners {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        for ip in addresses {
            let verdict = match self.dns.ptr(ip).await {
                Ok(names) if names.contains(&hostname) => {
                    if forward.contains(&ip) {
                        Verdict::ok(format!("{ip} → {hostname} → {ip} (forward-confirmed)"))
                    } else {
                        Verdict::warn(
                            format!("{ip} → {hostname}, but {hostname} does not resolve to {ip}"),
                            format!("add {ip} to {hostname}'s A/AAAA records"),
                        )
                    }
                }
                Ok(names) if names.is_empty() => Verdict::fail(
                    format!("{ip} has no PTR record (the HELO name is {hostname})"),
                    format!(
                        "ask whoever runs {ip} (your hosting provider) to set its PTR to {hostname}"
                    ),
                ),
                Ok(names) => Verdict::fail(
                    format!(
                        "{ip} → {}, not {hostname} (the HELO name)",
                        names.join(", ")
                    ),
                    format!(
                        "set the PTR of {ip} to {hostname}, or hostname = one of its PTR names"
                    ),
                ),
                Err(e) => Verdict::warn(
                    format!("{ip}: {e}"),
                    "check that the reverse zone's nameservers answer",
                ),
            };
            findings.push(Finding::new("PTR", verdict));
        }
        findings
    }

    async fn spf(&self) -> Finding {
        match self.dns.txt(&self.domain).await {
            Ok(records) => Finding::new("SPF", records::spf(&self.domain, &records)),
            Err(e) => self.unanswered("SPF", &e),
        }
    }

    /// For each configured selector of the domain, the published key is ours.
    async fn dkim(&self) -> Vec<Finding> {
        let Some(config) = self.config else {
            return vec![Finding::new(
                "DKIM",
                Verdict::warn(
                    "not checked without --config (the selectors and keys are there)",
                    "run with --config to check the key of each [[dkim_key]]",
                ),
            )];
        };
        let keys: Vec<_> = config
            .dkim_keys
            .iter()
            .filter(|k| {
                k.domain
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&self.domain)
            })
            .collect();
        if keys.is_empty() {
            return vec![Finding::new(
                "DKIM",
                Verdict::warn(
                    format!("no [[dkim_key]] for {}: mail is not signed", self.domain),
                    format!(
                        "make a key with mta dkim-keygen --domain {} --selector s1, and publish it",
                        self.domain
                    ),
                ),
            )];
        }
        let mut findings = Vec::new();
        for key in keys {
            let check = format!("DKIM {}", key.selector);
            let name = format!("{}._domainkey.{}", key.selector, self.domain);
            let ours = match public_key(&key.private_key) {
                Ok(ours) => ours,
                Err(e) => {
                    findings.push(Finding::new(
                        check,
                        Verdict::fail(
                            format!("cannot read the key {}: {e:#}", key.private_key.display()),
                            "check [[dkim_key]] private_key (mta check-config)",
                        ),
                    ));
                    continue;
                }
            };
            let verdict = match self.dns.txt(&name).await {
                Ok(records) => dkim_verdict(&name, &records, &ours),
                Err(e) => Verdict::warn(
                    format!("{name}: {e}"),
                    "check that the domain's nameservers answer",
                ),
            };
            findings.push(Finding::new(check, verdict));
        }
        findings
    }

    /// The `_mta-sts` TXT record and, when there is one, the policy it announces.
    async fn mta_sts(&self, exchangers: &Exchangers) -> Vec<Finding> {
        let (verdict, fetch) = match self.dns.txt(&format!("_mta-sts.{}", self.domain)).await {
            Ok(records) => records::mta_sts_record(&self.domain, &records),
            Err(e) => return vec![self.unanswered("MTA-STS", &e)],
        };
        let mut findings = vec![Finding::new("MTA-STS", verdict)];
        if fetch {
            findings.push(Finding::new(
                "MTA-STS policy",
                self.sts_policy(exchangers).await,
            ));
        }
        findings
    }

    async fn sts_policy(&self, exchangers: &Exchangers) -> Verdict {
        let host = format!("mta-sts.{}", self.domain);
        let url = format!("https://{host}/.well-known/mta-sts.txt");
        let addresses = match self.dns.addresses(&host).await {
            Ok(a) if a.is_empty() => {
                return Verdict::fail(
                    format!("{host} has no A/AAAA record: senders cannot fetch {url}"),
                    format!("publish an address for {host} and serve the policy there over HTTPS"),
                );
            }
            Ok(a) => a,
            Err(e) => {
                return Verdict::warn(format!("{host}: {e}"), "check that the nameservers answer");
            }
        };
        let tls = match smtp_client::TlsConfigs::new(self.extra_roots.clone()) {
            Ok(configs) => configs.verified,
            Err(e) => {
                return Verdict::warn(
                    format!("{url}: not fetched: {e}"),
                    "check the system's trusted certificates (ca-certificates)",
                );
            }
        };
        // One request takes longer than one query: twice the DNS time (10 s by default).
        let fetch = mta_sts::FetchConfig {
            port: self.https_port,
            timeout: self.timeout.saturating_mul(2),
            tls,
        };
        let response = match mta_sts::get(&host, &addresses, mta_sts::WELL_KNOWN_PATH, &fetch).await
        {
            Ok(response) => response,
            Err(mta_sts::PolicyError::TimedOut(timeout)) => {
                return Verdict::warn(
                    format!(
                        "{url}: no answer within {}",
                        humantime::format_duration(timeout)
                    ),
                    format!("check that {host} serves HTTPS"),
                );
            }
            Err(e) => {
                return Verdict::fail(
                    format!("{url}: {e}"),
                    format!(
                        "serve the policy at {url} with a certificate for {host} from a public CA"
                    ),
                );
            }
        };
        if (300..400).contains(&response.status) {
            return Verdict::fail(
                format!(
                    "{url} redirects ({}{}): senders do not follow redirects (RFC 8461 §3.3)",
                    response.status,
                    response
                        .location
                        .map(|l| format!(" to {l}"))
                        .unwrap_or_default()
                ),
                format!("serve the policy itself at {url}"),
            );
        }
        if response.status != 200 {
            return Verdict::fail(
                format!("{url} answered HTTP {}", response.status),
                format!("serve the policy at {url}"),
            );
        }
        let text = String::from_utf8_lossy(&response.body);
        let verdict = records::mta_sts_policy(&PolicyFields::parse(&text), &exchangers.hosts);
        let plain = response
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/plain"));
        if verdict.status == Status::Ok && !plain {
            return Verdict::warn(
                format!(
                    "{}; served as {} rather than text/plain",
                    verdict.found,
                    response
                        .content_type
                        .as_deref()
                        .unwrap_or("no Content-Type")
                ),
                "serve the policy with Content-Type: text/plain (RFC 8461 §3.2)",
            );
        }
        verdict
    }

    async fn tls_rpt(&self) -> Finding {
        match self.dns.txt(&format!("_smtp._tls.{}", self.domain)).await {
            Ok(records) => Finding::new("TLS-RPT", records::tls_rpt(&self.domain, &records)),
            Err(e) => self.unanswered("TLS-RPT", &e),
        }
    }

    /// TLSA records of each MX host, reported, never validated (no DNSSEC here).
    async fn tlsa(&self, exchangers: &Exchangers) -> Vec<Finding> {
        let mut findings = Vec::new();
        for host in &exchangers.hosts {
            if host.parse::<IpAddr>().is_ok() {
                continue;
            }
            let name = format!("_25._tcp.{host}");
            let check = format!("TLSA {host}");
            let verdict = match self.dns.tlsa(&name).await {
                Ok(records) if records.is_empty() => Verdict::ok(format!(
                    "no TLSA record at {name} (DANE not used; optional)"
                )),
                Ok(records) => {
                    let shown: Vec<String> = records
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {} {} {}",
                                u8::from(t.cert_usage),
                                u8::from(t.selector),
                                u8::from(t.matching),
                                hex_prefix(&t.cert_data)
                            )
                        })
                        .collect();
                    Verdict::warn(
                        format!(
                            "{name}: {} (not validated: DNSSEC is not checked here)",
                            shown.join(", ")
                        ),
                        "check that the zone is DNSSEC-signed and the records match the certificate, with a DANE validator",
                    )
                }
                Err(e) => {
                    Verdict::warn(format!("{name}: {e}"), "check that the nameservers answer")
                }
            };
            findings.push(Finding::new(check, verdict));
        }
        findings
    }
}

/// Whether `ip` could be reached from the Internet (not loopback, private, link-local,
/// unspecified).
fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6.is_unicast_link_local())
        }
    }
}

/// A published key to compare: the algorithm (`k=`) and the `p=` value's bytes.
struct PublicKey {
    /// `rsa` or `ed25519`.
    algorithm: &'static str,
    /// The SubjectPublicKeyInfo (RSA) or the raw key (Ed25519, RFC 8463).
    published: Vec<u8>,
    /// Another form receivers accept (RSA's bare RSAPublicKey), if any.
    alternative: Option<Vec<u8>>,
}

impl PublicKey {
    fn record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm,
            STANDARD.encode(&self.published)
        )
    }
}

/// The public half of a `[[dkim_key]]` private key (RSA PKCS#1 or PKCS#8, Ed25519 PKCS#8),
/// in the form `mta dkim-keygen` publishes.
fn public_key(path: &std::path::Path) -> anyhow::Result<PublicKey> {
    let pem = std::fs::read_to_string(path)?;
    let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| anyhow::anyhow!("{e}"))?;
    if pair.algorithm() == &rcgen::PKCS_ED25519 {
        Ok(PublicKey {
            algorithm: "ed25519",
            published: pair.public_key_raw().to_vec(),
            alternative: None,
        })
    } else if pair.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        Ok(PublicKey {
            algorithm: "rsa",
            published: pair.subject_public_key_info(),
            alternative: Some(pair.public_key_raw().to_vec()),
        })
    } else {
        anyhow::bail!("not an RSA or Ed25519 key")
    }
}

/// Judges the records at `name` against our key.
fn dkim_verdict(name: &str, records: &[String], ours: &PublicKey) -> Verdict {
    let publish = format!("publish: {}", records::zone_line(name, &ours.record()));
    let keys: Vec<&String> = records
        .iter()
        .filter(|r| {
            let tags = records::tags(r);
            records::tag(&tags, "p").is_some()
                || records::tag(&tags, "v").is_some_and(|v| v.eq_ignore_ascii_case("DKIM1"))
        })
        .collect();
    let record = match keys.as_slice() {
        [] => return Verdict::fail(format!("no DKIM key record at {name}"), publish),
        [one] => one.as_str(),
        many => {
            return Verdict::fail(
                format!(
                    "{} DKIM records at {name}: receivers may pick any",
                    many.len()
                ),
                format!("keep only one; {publish}"),
            );
        }
    };
    let tags = records::tags(record);
    let p: String = records::tag(&tags, "p")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if p.is_empty() {
        return Verdict::fail(format!("{name}: the key is revoked (empty p=)"), publish);
    }
    let algorithm = records::tag(&tags, "k")
        .unwrap_or("rsa")
        .to_ascii_lowercase();
    let decoded = STANDARD.decode(p.as_bytes()).ok();
    let matches = algorithm == ours.algorithm
        && decoded.as_ref().is_some_and(|d| {
            *d == ours.published || ours.alternative.as_ref().is_some_and(|a| a == d)
        });
    if matches {
        Verdict::ok(format!(
            "{name}: k={algorithm}, p= matches the configured key"
        ))
    } else {
        Verdict::fail(
            format!(
                "{name}: the published key (k={algorithm}, p={}) is not the configured one",
                shorten(&p)
            ),
            publish,
        )
    }
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn shorten(text: &str) -> String {
    if text.len() > 24 {
        format!("{}...", &text[..20])
    } else {
        text.to_owned()
    }
}

fn hex_prefix(data: &[u8]) -> String {
    let hex: String = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if data.len() > 8 {
        format!("{hex}...")
    } else {
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(normalize("Example.ORG.").unwrap(), "example.org");
        assert_eq!(
            normalize("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert!(normalize("localhost").is_err());
        assert!(normalize("a..b").is_err());
        assert!(normalize("exa mple.org").is_err());
    }

    #[test]
    fn resolvers_take_a_default_port() {
        assert_eq!(parse_resolver("192.0.2.1").unwrap().port(), 53);
        assert_eq!(parse_resolver("127.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_resolver("[::1]:53").unwrap().port(), 53);
        assert!(parse_resolver("ns.example").is_err());
    }

    #[test]
    fn only_public_addresses_count() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::",
        ] {
            assert!(!public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.25", "2001:db8::25"] {
            assert!(public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn dkim_records_are_compared_with_the_key() {
        let key = auth_checks::generate_key(auth_checks::KeyKind::Ed25519).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &key.private_pem).unwrap();
        let ours = public_key(&path).unwrap();
        assert_eq!(ours.record(), key.dns_txt);
        let name = "s1._domainkey.example.org";
        let ok = dkim_verdict(name, std::slice::from_ref(&key.dns_txt), &ours);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        let other = auth_checks::generate_key(auth_checks::KeyKind::Ed25519).unwrap();
        let bad = dkim_verdict(name, &[other.dns_txt], &ours);
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.fix.unwrap().contains(&key.dns_txt));
        assert_eq!(dkim_verdict(name, &[], &ours).status, Status::Fail);
        let revoked = dkim_verdict(name, &["v=DKIM1; p=".to_owned()], &ours);
        assert!(revoked.found.contains("revoked"), "{revoked:?}");

        let rsa = auth_checks::generate_key(auth_checks::KeyKind::Rsa).unwrap();
        std::fs::write(&path, &rsa.private_pem).unwrap();
        let ours = public_key(&path).unwrap();
        assert_eq!(ours.record(), rsa.dns_txt);
        // Folded with spaces, as zone files split long keys.
        let folded = rsa.dns_txt.replacen("p=MII", "p= MII", 1);
        assert_eq!(dkim_verdict(name, &[folded], &ours).status, Status::Ok);
    }
}
