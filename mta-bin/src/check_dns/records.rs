//! The records `mta check-dns` reads, judged without I/O: SPF (a light check), the
//! `tag=value` records (DKIM, DMARC, MTA-STS, TLS-RPT, BIMI) and the MTA-STS policy
//! file. Each judgement is a [`Verdict`]: a status, what was found, and the fix.

use smtp_client::mta_sts::{MAX_AGE_LIMIT, PolicyFields as StsPolicy, StsRecord, mx_matches};

use super::Status;

/// What a check concluded: its status, what was found, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) status: Status,
    pub(crate) found: String,
    pub(crate) fix: Option<String>,
}

impl Verdict {
    pub(crate) fn ok(found: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    pub(crate) fn warn(found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn fail(found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The TXT records (each one's strings joined) that begin with `version` (such as
/// `v=spf1`), compared without case, followed by the end, a space or a `;`.
pub(crate) fn with_version<'a>(records: &'a [String], version: &str) -> Vec<&'a str> {
    records
        .iter()
        .map(String::as_str)
        .filter(|r| {
            r.get(..version.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(version))
                && matches!(
                    r.as_bytes().get(version.len()),
                    None | Some(b' ' | b';' | b'\t')
                )
        })
        .collect()
}

/// The `tag=value` pairs of a DKIM, DMARC, MTA-STS, TLS-RPT or BIMI record, tags in
/// lower case, values trimmed; parts without `=` are left out.
pub(crate) fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| part.split_once('='))
        .map(|(tag, value)| (tag.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

/// The value of `tag` in `tags`, the first one.
pub(crate) fn tag<'a>(tags: &'a [(String, String)], tag: &str) -> Option<&'a str> {
    tags.iter().find(|(t, _)| t == tag).map(|(_, v)| v.as_str())
}

/// The SPF record of `domain` among its TXT records (RFC 7208): exactly one, whose
/// terms are known mechanisms and modifiers, ending with `all` or carrying a
/// `redirect=`, and not letting everyone pass (`+all`).
pub(crate) fn spf(domain: &str, records: &[String]) -> Verdict {
    let suggestion = format!("publish one TXT record at {domain}: \"v=spf1 mx -all\"");
    let spf = with_version(records, "v=spf1");
    let record = match spf.as_slice() {
        [] => return Verdict::fail("no v=spf1 TXT record", suggestion),
        [one] => *one,
        many => {
            return Verdict::fail(
                format!(
                    "{} v=spf1 records (receivers give a permerror, RFC 7208 §4.5): {}",
                    many.len(),
                    quoted(many)
                ),
                "merge them into one v=spf1 record",
            );
        }
    };
    let mut all = None;
    let mut redirect = false;
    for term in record.split_ascii_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        if let Some((name, _)) = lower.split_once('=')
            && !name.contains(':')
            && !name.contains('/')
        {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return bad_spf(record, term);
            }
            redirect |= name == "redirect";
            continue;
        }
        let (qualifier, mechanism) = match lower.as_bytes().first() {
            Some(q @ (b'+' | b'-' | b'~' | b'?')) => (*q, &lower[1..]),
            _ => (b'+', lower.as_str()),
        };
        let name = mechanism.split([':', '/']).next().unwrap_or_default();
        if !matches!(
            name,
            "all" | "include" | "a" | "mx" | "ptr" | "ip4" | "ip6" | "exists"
        ) || (matches!(name, "include" | "exists" | "ip4" | "ip6") && !mechanism.contains(':'))
        {
            return bad_spf(record, term);
        }
        if name == "all" {
            if mechanism != "all" {
                return bad_spf(record, term);
            }
            all = Some(qualifier);
        }
    }
    let shown = format!("\"{record}\"");
    match all {
        Some(b'+') => Verdict::warn(
            format!("{shown}: +all lets anyone send as {domain}"),
            "end the record with -all (or ~all)",
        ),
        Some(b'?') => Verdict::warn(
            format!("{shown}: ?all says nothing about other senders"),
            "end the record with -all (or ~all)",
        ),
        Some(_) => Verdict::ok(shown),
        None if redirect => Verdict::ok(shown),
        None => Verdict::warn(
            format!("{shown}: no all or redirect=, other senders are neutral"),
            "end the record with -all (or ~all)",
        ),
    }
}

fn bad_spf(record: &str, term: &str) -> Verdict {
    Verdict::fail(
        format!("\"{record}\": {term:?} is not an SPF term (receivers give a permerror)"),
        "correct the record (RFC 7208 §5, §6)",
    )
}

/// The policy of a DMARC record, when it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

/// The DMARC record at `_dmarc.<domain>` (RFC 7489 §6.3): exactly one, `v=DMARC1` first,
/// a `p=`; `p=none` is a warning. Also returns the policy in force (with `pct=`
/// below 100 counted as none for BIMI).
pub(crate) fn dmarc(domain: &str, records: &[String]) -> (Verdict, Option<DmarcPolicy>) {
    let name = format!("_dmarc.{domain}");
    let dmarc = with_version(records, "v=DMARC1");
    let record = match dmarc.as_slice() {
        [] => {
            return (
                Verdict::fail(
                    format!("no v=DMARC1 TXT record at {name}"),
                    format!(
                        "publish a TXT record at {name}: \"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{domain}\""
                    ),
                ),
                None,
            );
        }
        [one] => *one,
        many => {
            return (
                Verdict::fail(
                    format!(
                        "{} v=DMARC1 records at {name} (receivers apply none, RFC 7489 §6.6.3)",
                        many.len()
                    ),
                    "keep exactly one DMARC record",
                ),
                None,
            );
        }
    };
    let tags = tags(record);
    let shown = format!("\"{record}\"");
    let policy = match tag(&tags, "p").map(str::to_ascii_lowercase).as_deref() {
        Some("none") => DmarcPolicy::None,
        Some("quarantine") => DmarcPolicy::Quarantine,
        Some("reject") => DmarcPolicy::Reject,
        Some(other) => {
            return (
                Verdict::fail(
                    format!("{shown}: p={other} is not none, quarantine or reject"),
                    "set p=quarantine or p=reject",
                ),
                None,
            );
        }
        None => {
            return (
                Verdict::fail(
                    format!("{shown}: no p= tag (required)"),
                    "add p=quarantine or p=reject",
                ),
                None,
            );
        }
    };
    let mut notes = Vec::new();
    match tag(&tags, "rua") {
        Some(rua) => notes.push(format!("aggregate reports to {rua}")),
        None => notes.push("no rua=: no aggregate reports".to_owned()),
    }
    let pct = tag(&tags, "pct").and_then(|p| p.parse::<u8>().ok());
    if let Some(pct) = pct.filter(|p| *p < 100) {
        notes.push(format!("applied to {pct}% of failing mail"));
    }
    let found = format!("{shown} ({})", notes.join("; "));
    let in_force = if pct.is_some_and(|p| p < 100) {
        DmarcPolicy::None
    } else {
        policy
    };
    let verdict = match policy {
        DmarcPolicy::None => Verdict::warn(
            found,
            "p=none only monitors: once the reports show your own mail passing, move to p=quarantine, then p=reject",
        ),
        _ => Verdict::ok(found),
    };
    (verdict, Some(in_force))
}

/// The MTA-STS record at `_mta-sts.<domain>` (RFC 8461 §3.1): `None` when there is
/// none (a warning: the domain's mail can be downgraded to plaintext), else the
/// verdict and whether a policy should be fetched.
pub(crate) fn mta_sts_record(domain: &str, records: &[String]) -> (Verdict, bool) {
    let name = format!("_mta-sts.{domain}");
    let sts = with_version(records, "v=STSv1");
    let record = match sts.as_slice() {
        [] => {
            return (
                Verdict::warn(
                    format!("no v=STSv1 TXT record at {name}"),
                    format!(
                        "publish \"v=STSv1; id=20250101\" at {name} and a policy at https://mta-sts.{domain}/.well-known/mta-sts.txt (RFC 8461)"
                    ),
                ),
                false,
            );
        }
        [one] => *one,
        many => {
            return (
                Verdict::fail(
                    format!(
                        "{} v=STSv1 records at {name} (senders ignore them all, RFC 8461 §3.1)",
                        many.len()
                    ),
                    "keep exactly one",
                ),
                false,
            );
        }
    };
    let tags = tags(record);
    let shown = format!("\"{record}\"");
    // What senders read, by the parser remote delivery uses.
    let parsed = StsRecord::parse(record);
    match tag(&tags, "id") {
        Some(_) if parsed.is_ok() => (Verdict::ok(shown), true),
        Some(id)
            if (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            (
                Verdict::fail(
                    format!(
                        "{shown}: senders read no policy ({})",
                        parsed.err().map(|e| e.to_string()).unwrap_or_default()
                    ),
                    format!("publish exactly \"v=STSv1; id={id}\""),
                ),
                false,
            )
        }
        Some(id) => (
            Verdict::fail(
                format!("{shown}: id={id} is not 1 to 32 letters and digits"),
                "use an id such as the date: id=20250101",
            ),
            false,
        ),
        None => (
            Verdict::fail(
                format!("{shown}: no id="),
                "add an id= (letters and digits, changed with each policy change)",
            ),
            false,
        ),
    }
}

/// Judges a fetched policy against the domain's MX hosts (`mx_hosts`, empty for a null
/// MX or when they are unknown).
pub(crate) fn mta_sts_policy(policy: &StsPolicy, mx_hosts: &[String]) -> Verdict {
    let fix_policy =
        "serve version: STSv1, mode: enforce, max_age: 604800 and one mx: line per MX host";
    if policy.version.as_deref() != Some("STSv1") {
        return Verdict::fail(
            format!(
                "the policy's version is {}",
                policy.version.as_deref().unwrap_or("missing")
            ),
            fix_policy,
        );
    }
    let Some(mode) = policy.mode.as_deref() else {
        return Verdict::fail("the policy has no mode", fix_policy);
    };
    if !matches!(mode, "enforce" | "testing" | "none") {
        return Verdict::fail(
            format!("mode {mode:?} is not enforce, testing or none"),
            fix_policy,
        );
    }
    let max_age = match policy.max_age.as_deref().map(str::parse::<u64>) {
        Some(Ok(age)) if age <= MAX_AGE_LIMIT => age,
        Some(_) => {
            return Verdict::fail(
                format!(
                    "max_age {} is not a number of seconds up to {MAX_AGE_LIMIT}",
                    policy.max_age.as_deref().unwrap_or_default()
                ),
                fix_policy,
            );
        }
        None => return Verdict::fail("the policy has no max_age", fix_policy),
    };
    if mode != "none" && policy.mx.is_empty() {
        return Verdict::fail("the policy has no mx: line", fix_policy);
    }
    let found = format!(
        "mode {mode}, max_age {max_age}, mx {}",
        if policy.mx.is_empty() {
            "none".to_owned()
        } else {
            policy.mx.join(", ")
        }
    );
    let unmatched: Vec<&String> = mx_hosts
        .iter()
        .filter(|host| !policy.mx.iter().any(|p| mx_matches(p, host)))
        .collect();
    if !unmatched.is_empty() && mode != "none" {
        let list = unmatched
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let found = format!("{found}; no mx: pattern matches the MX {list}");
        let fix = format!("add mx: {list} to the policy (and change the TXT record's id=)");
        return match mode {
            "enforce" => Verdict::fail(
                format!("{found}: senders that enforce the policy will not deliver there"),
                fix,
            ),
            _ => Verdict::warn(found, fix),
        };
    }
    match mode {
        "testing" => Verdict::warn(
            format!("{found}: testing only, failures are reported but mail still goes"),
            "when the TLS reports are clean, switch to mode: enforce",
        ),
        "none" => Verdict::warn(
            format!("{found}: the policy is withdrawn"),
            "serve mode: enforce (or testing) unless you mean to retire MTA-STS",
        ),
        _ if max_age < 86_400 => Verdict::warn(
            format!("{found}: max_age under a day gives little protection"),
            "use a max_age of weeks (604800 or more)",
        ),
        _ => Verdict::ok(found),
    }
}

/// The TLS-RPT record at `_smtp._tls.<domain>` (RFC 8460 §3): one `v=TLSRPTv1` with
/// a `rua=` of `mailto:` or `https:` addresses.
pub(crate) fn tls_rpt(domain: &str, records: &[String]) -> Verdict {
    let name = format!("_smtp._tls.{domain}");
    let rpt = with_version(records, "v=TLSRPTv1");
    let record = match rpt.as_slice() {
        [] => {
            return Verdict::warn(
                format!("no v=TLSRPTv1 TXT record at {name}"),
                format!(
                    "publish \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\" at {name} to hear of TLS failures (RFC 8460)"
                ),
            );
        }
        [one] => *one,
        many => {
            return Verdict::fail(
                format!(
                    "{} v=TLSRPTv1 records at {name} (senders use none, RFC 8460 §3)",
                    many.len()
                ),
                "keep exactly one",
            );
        }
    };
    let tags = tags(record);
    let shown = format!("\"{record}\"");
    let Some(rua) = tag(&tags, "rua") else {
        return Verdict::fail(
            format!("{shown}: no rua="),
            format!("add rua=mailto:tls-reports@{domain}"),
        );
    };
    let bad: Vec<&str> = rua
        .split(',')
        .map(str::trim)
        .filter(|u| {
            let lower = u.to_ascii_lowercase();
            !(lower.starts_with("mailto:") || lower.starts_with("https://"))
        })
        .collect();
    if !bad.is_empty() || rua.is_empty() {
        return Verdict::fail(
            format!("{shown}: rua= must list mailto: or https: addresses"),
            format!("use rua=mailto:tls-reports@{domain}"),
        );
    }
    Verdict::ok(shown)
}

/// The BIMI record at `default._bimi.<domain>`: only ever a warning, and only
/// meaningful with DMARC at quarantine or reject.
pub(crate) fn bimi(domain: &str, records: &[String], dmarc: Option<DmarcPolicy>) -> Verdict {
    let name = format!("default._bimi.{domain}");
    let bimi = with_version(records, "v=BIMI1");
    let record = match bimi.as_slice() {
        [] => return Verdict::ok(format!("no BIMI record at {name} (optional)")),
        [one] => *one,
        many => {
            return Verdict::warn(
                format!("{} v=BIMI1 records at {name}", many.len()),
                "keep exactly one",
            );
        }
    };
    let tags = tags(record);
    let shown = format!("\"{record}\"");
    let location = tag(&tags, "l").unwrap_or_default();
    if !location.to_ascii_lowercase().starts_with("https://") {
        return Verdict::warn(
            format!("{shown}: l= is not an https: URL"),
            "set l= to the https: URL of the SVG logo",
        );
    }
    match dmarc {
        Some(DmarcPolicy::Quarantine | DmarcPolicy::Reject) => Verdict::ok(shown),
        _ => Verdict::warn(
            format!("{shown}: receivers show no logo without DMARC p=quarantine or p=reject"),
            "enforce DMARC (p=quarantine or p=reject, pct=100)",
        ),
    }
}

/// A TXT record of `value` at `name` as one zone-file line, the value split into
/// strings of at most 250 octets (as `mta dkim-keygen` prints it).
pub(crate) fn zone_line(name: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT {}", parts.join(" "))
}

fn quoted(records: &[&str]) -> String {
    records
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn spf_records_are_judged() {
        let cases: &[(&[&str], Status, &str)] = &[
            (&["v=spf1 mx -all"], Status::Ok, "\"v=spf1 mx -all\""),
            (
                &["v=spf1 ip4:192.0.2.0/24 include:_spf.example.net ~all"],
                Status::Ok,
                "",
            ),
            (&["v=spf1 redirect=_spf.example.net"], Status::Ok, ""),
            (
                &["google-site-verification=x", "v=spf1 a -all"],
                Status::Ok,
                "",
            ),
            (&[], Status::Fail, "no v=spf1"),
            (
                &["v=spf1 -all", "v=spf1 mx -all"],
                Status::Fail,
                "2 v=spf1 records",
            ),
            (&["v=spf1 +all"], Status::Warn, "+all"),
            (&["v=spf1 mx all"], Status::Warn, "+all"),
            (&["v=spf1 mx ?all"], Status::Warn, "?all"),
            (&["v=spf1 mx"], Status::Warn, "no all"),
            (
                &["v=spf1 mx include -all"],
                Status::Fail,
                "\"include\" is not",
            ),
            (&["v=spf1 mx foo:bar -all"], Status::Fail, "not an SPF term"),
            (&["v=spf10 mx -all"], Status::Fail, "no v=spf1"),
            (&["V=SPF1 MX -ALL"], Status::Ok, ""),
        ];
        for (list, status, found) in cases {
            let verdict = spf("example.org", &records(list));
            assert_eq!(verdict.status, *status, "{list:?}: {verdict:?}");
            assert!(verdict.found.contains(found), "{list:?}: {verdict:?}");
            assert_eq!(verdict.fix.is_some(), *status != Status::Ok);
        }
    }

    #[test]
    fn dmarc_records_are_judged() {
        let cases: &[(&[&str], Status, Option<DmarcPolicy>, &str)] = &[
            (
                &["v=DMARC1; p=reject; rua=mailto:d@example.org"],
                Status::Ok,
                Some(DmarcPolicy::Reject),
                "aggregate reports to mailto:d@example.org",
            ),
            (
                &["v=DMARC1; p=quarantine; pct=50"],
                Status::Ok,
                Some(DmarcPolicy::None),
                "50%",
            ),
            (
                &["v=DMARC1; p=none"],
                Status::Warn,
                Some(DmarcPolicy::None),
                "no rua=",
            ),
            (&["v=DMARC1; rua=mailto:x@y"], Status::Fail, None, "no p="),
            (&["v=DMARC1; p=maybe"], Status::Fail, None, "p=maybe"),
            (&[], Status::Fail, None, "no v=DMARC1"),
            (
                &["v=DMARC1; p=none", "v=DMARC1; p=reject"],
                Status::Fail,
                None,
                "2 v=DMARC1",
            ),
        ];
        for (list, status, policy, found) in cases {
            let (verdict, p) = dmarc("example.org", &records(list));
            assert_eq!(verdict.status, *status, "{list:?}: {verdict:?}");
            assert_eq!(p, *policy, "{list:?}");
            assert!(verdict.found.contains(found), "{list:?}: {verdict:?}");
        }
    }

    #[test]
    fn mta_sts_records_and_policies_are_judged() {
        let (v, fetch) = mta_sts_record("example.org", &records(&["v=STSv1; id=2025a"]));
        assert_eq!((v.status, fetch), (Status::Ok, true));
        let (v, fetch) = mta_sts_record("example.org", &records(&["v=STSv1; id=a-b"]));
        assert_eq!((v.status, fetch), (Status::Fail, false));
        // Senders want v=STSv1 exactly as the RFC spells it.
        let (v, fetch) = mta_sts_record("example.org", &records(&["V=stsv1; id=2025a"]));
        assert_eq!((v.status, fetch), (Status::Fail, false), "{v:?}");
        assert!(v.found.contains("senders read no policy"), "{v:?}");
        let (v, fetch) = mta_sts_record("example.org", &records(&[]));
        assert_eq!((v.status, fetch), (Status::Warn, false));

        let policy = StsPolicy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.backup.example.org\r\nmax_age: 604800\r\n",
        );
        assert_eq!(policy.mx, ["mx1.example.org", "*.backup.example.org"]);
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let v = mta_sts_policy(
            &policy,
            &hosts(&["mx1.example.org", "b.backup.example.org"]),
        );
        assert_eq!(v.status, Status::Ok, "{v:?}");
        let v = mta_sts_policy(&policy, &hosts(&["mx2.example.org"]));
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert!(
            v.fix
                .as_deref()
                .is_some_and(|f| f.contains("mx: mx2.example.org"))
        );
        let testing = StsPolicy {
            mode: Some("testing".into()),
            ..policy.clone()
        };
        assert_eq!(
            mta_sts_policy(&testing, &hosts(&["x.example.org"])).status,
            Status::Warn
        );
        assert_eq!(
            mta_sts_policy(&testing, &hosts(&["mx1.example.org"])).status,
            Status::Warn
        );
        let no_version = StsPolicy::parse("mode: enforce\nmx: a\nmax_age: 5\n");
        assert_eq!(mta_sts_policy(&no_version, &[]).status, Status::Fail);
        let huge = StsPolicy {
            max_age: Some("99999999999".into()),
            ..policy
        };
        assert_eq!(mta_sts_policy(&huge, &[]).status, Status::Fail);
    }

    #[test]
    fn mx_patterns_match_one_label() {
        assert!(mx_matches("mx.example.org", "MX.example.org."));
        assert!(mx_matches("*.example.org", "mx.example.org"));
        assert!(!mx_matches("*.example.org", "a.mx.example.org"));
        assert!(!mx_matches("*.example.org", "example.org"));
        assert!(!mx_matches("mx.example.org", "mx2.example.org"));
    }

    #[test]
    fn tls_rpt_and_bimi_records_are_judged() {
        let ok = tls_rpt(
            "example.org",
            &records(&["v=TLSRPTv1; rua=mailto:t@example.org"]),
        );
        assert_eq!(ok.status, Status::Ok);
        let bad = tls_rpt("example.org", &records(&["v=TLSRPTv1; rua=t@example.org"]));
        assert_eq!(bad.status, Status::Fail);
        assert_eq!(tls_rpt("example.org", &[]).status, Status::Warn);

        let record = records(&["v=BIMI1; l=https://example.org/logo.svg"]);
        assert_eq!(
            bimi("example.org", &record, Some(DmarcPolicy::Reject)).status,
            Status::Ok
        );
        assert_eq!(
            bimi("example.org", &record, Some(DmarcPolicy::None)).status,
            Status::Warn
        );
        assert_eq!(bimi("example.org", &[], None).status, Status::Ok);
        let http = records(&["v=BIMI1; l=http://example.org/logo.svg"]);
        assert_eq!(
            bimi("example.org", &http, Some(DmarcPolicy::Reject)).status,
            Status::Warn
        );
    }

    #[test]
    fn zone_lines_split_long_values() {
        let value = "x".repeat(300);
        let line = zone_line("s._domainkey.example.org", &value);
        assert!(line.starts_with("s._domainkey.example.org. IN TXT \"xxx"));
        assert_eq!(line.matches('"').count(), 4);
    }
}
