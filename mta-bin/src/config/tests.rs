//! The configuration's parsing and checks, on texts.

use std::path::Path;
use std::time::Duration;

use super::*;

#[test]
fn embedded_default_parses() {
    let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert!(c.local.accept_any_user);
}

#[test]
fn issue_example_keys_parse() {
    let text = r#"
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
[tls]
certificate = "/path/cert.pem"
private_key = "/path/key.pem"
[queue]
path = "/path/queue"
retry_intervals = ["5m", "10m", "30m", "1h", "2h", "4h"]
max_age = "5d"
[local]
domains = ["example.test"]
maildir = "/path/maildir"
[[account]]
username = "alice@example.test"
password = "secret"
[limits]
max_message_size = 52428800
max_recipients = 100
[dns]
nameservers = ["127.0.0.1:53"]
[outbound]
port = 25
tls = "opportunistic"
"#;
    let c = Config::parse(text).unwrap();
    assert_eq!(c.hostname, "mx.example.test");
    assert_eq!(c.queue.retry_intervals.len(), 6);
    assert_eq!(c.accounts[0].username, "alice@example.test");
    assert_eq!(c.limits.max_message_size, Some(52_428_800));
    assert_eq!(c.dns.nameservers.len(), 1);
}

#[test]
fn errors_name_key_and_line() {
    let err = Config::parse("hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n[limits]\nmax_recipients = \"many\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 6") && err.contains("max_recipients"),
        "{err}"
    );
    let err = Config::parse("hostname = \"x\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
    let err = Config::parse(
        "hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"smtp\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mode"), "{err}");
}

#[test]
fn generated_files_go_to_data_dir_else_beside_the_queue() {
    let base = "hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n\
                [queue]\npath = \"/var/spool/mta\"\n";
    let c = Config::parse(base).unwrap();
    assert_eq!(c.data_dir(), Path::new("/var/spool"));
    let c = Config::parse(&format!("data_dir = \"/var/lib/mta\"\n{base}")).unwrap();
    assert_eq!(c.data_dir(), Path::new("/var/lib/mta"));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = "hostname = \"x\"\n\
                [[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n\
                [[listener]]\naddress = \"127.0.0.1:2\"\nmode = \"smtp\"\n\
                [queue]\nmax_age = \"5 fortnights\"\n\
                [outbound]\n# the relay\nrelay_tls = \"sometimes\"\n";
    let err = Config::parse(text).unwrap_err();
    let problems: Vec<String> = err.downcast_ref::<Problems>().unwrap().each().collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("line 7: [[listener]] mode"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 9: [queue] max_age"),
        "{problems:?}"
    );
    assert!(
        problems[2].starts_with("line 12: [outbound] relay_tls"),
        "{problems:?}"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    assert!(parse_duration("5 fortnights").is_err());
    assert!(parse_duration("m").is_err());
}

const BASE: &str = "hostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"relay\"\n";

/// The problems of `BASE` with `extra` after it.
fn problems_of(extra: &str) -> Vec<String> {
    let err = Config::parse(&format!("{BASE}{extra}")).unwrap_err();
    err.downcast_ref::<Problems>().unwrap().each().collect()
}

#[test]
fn milters_parse_with_their_defaults() {
    let c = Config::parse(&format!(
        "{BASE}[[milter]]\nname = \"opendkim\"\naddress = \"unix:/run/opendkim/opendkim.sock\"\n\
         default_action = \"accept\"\nlisteners = [\"submission\", \"sendmail\"]\n\
         [[milter]]\naddress = \"inet:127.0.0.1:7357\"\ncommand_timeout = \"10s\"\nstages = [\"mail\", \"rcpt\"]\n"
    ))
    .unwrap();
    assert_eq!(c.milters.len(), 2);
    let (dkim, clam) = (&c.milters[0], &c.milters[1]);
    assert_eq!(dkim.name, "opendkim");
    assert_eq!(dkim.default_action, MilterDefaultAction::Accept);
    assert_eq!(
        dkim.listeners,
        [HookListener::Submission, HookListener::Sendmail]
    );
    assert_eq!(dkim.stages, MilterStage::all());
    assert_eq!(dkim.daemon_name, "mta");
    assert_eq!(dkim.max_replaced_body, 64 << 20);
    assert_eq!(clam.address.as_str(), "inet:127.0.0.1:7357");
    assert_eq!(clam.default_action, MilterDefaultAction::Tempfail);
    assert_eq!(clam.command_timeout, Duration::from_secs(10));
    assert_eq!(clam.connect_timeout, Duration::from_secs(30));
    assert_eq!(clam.end_of_message_timeout, Duration::from_secs(300));
    assert_eq!(clam.listeners, HookListener::smtp());
    let set = MilterStage::set(&clam.stages);
    assert!(!set.connect && !set.helo && set.mail && set.rcpt);
}

#[test]
fn a_bad_milter_is_told_with_key_and_line() {
    let problems = problems_of(
        "[[milter]]\naddress = \"unix:/run/a.sock\"\n[[milter]]\naddress = \"localhost:8891\"\n\
         [[milter]]\naddress = \"inet:127.0.0.1:1\"\ndefault_action = \"discard\"\nlisteners = []\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("line 8: [[milter]] address: bad milter address \"localhost:8891\""),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 11: [[milter]] default_action: unknown variant `discard`"),
        "{problems:?}"
    );
    // Read, but refused by the checks.
    let problems = problems_of(
        "[[milter]]\naddress = \"unix:/run/a.sock\"\n[[milter]]\nname = \"unix:/run/a.sock\"\n\
         address = \"inet:127.0.0.1:1\"\nlisteners = []\nconnect_timeout = 0\n",
    );
    assert_eq!(
        problems,
        [
            "line 10: [[milter]] listeners: give at least one of \"relay\", \"submission\", \"smtps\", \"sendmail\" (or remove the section)",
            "line 11: [[milter]] connect_timeout: must be more than 0",
            "line 8: [[milter]] name: \"unix:/run/a.sock\" is already the name of another milter (logs and X-Quarantine tell them apart by it)",
        ]
    );
}

#[test]
fn policy_services_parse_with_their_defaults() {
    let c = Config::parse(&format!(
        "{BASE}[[policy_service]]\naddress = \"inet:127.0.0.1:10023\"\n\
         [[policy_service]]\naddress = \"unix:/run/policyd-spf.sock\"\ntimeout = \"30s\"\n\
         default_action = \"accept\"\npolicy_context = \"spf\"\nask_trusted = true\n\
         max_reply_size = 4096\n"
    ))
    .unwrap();
    let (grey, spf) = (&c.policy_services[0], &c.policy_services[1]);
    assert_eq!(grey.address.to_string(), "inet:127.0.0.1:10023");
    assert_eq!(grey.timeout, Duration::from_secs(10));
    assert_eq!(grey.default_action, HookFailure::Tempfail);
    assert_eq!(grey.listeners, [HookListener::Relay]);
    assert!(!grey.ask_trusted);
    assert_eq!(spf.timeout, Duration::from_secs(30));
    assert_eq!(spf.default_action, HookFailure::Accept);
    assert_eq!(spf.policy_context, "spf");
    assert_eq!(grey.max_reply_size, 16 * 1024);
    assert_eq!(spf.max_reply_size, 4096);
    assert!(spf.ask_trusted);
}

#[test]
fn a_bad_policy_service_is_told_with_key_and_line() {
    let problems = problems_of(
        "[[policy_service]]\naddress = \"tcp:127.0.0.1:10023\"\n[[policy_service]]\n\
         address = \"inet:127.0.0.1:10023\"\ntimeout = \"0s\"\n",
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("line 6: [[policy_service]] address:")
            && problems[0].contains("tcp:127.0.0.1:10023"),
        "{problems:?}"
    );
    let problems = problems_of(
        "[[policy_service]]\naddress = \"inet:127.0.0.1:10023\"\n[[policy_service]]\n\
         address = \"inet:[::1]:10023\"\ntimeout = \"0s\"\nlisteners = []\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("line 10: [[policy_service]] listeners"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 9: [[policy_service]] timeout: must be more than 0"),
        "{problems:?}"
    );
}

#[test]
fn rspamd_parses_with_its_defaults() {
    let c = Config::parse(&format!("{BASE}[rspamd]\n")).unwrap();
    let r = c.rspamd.unwrap();
    assert_eq!(r.address.to_string(), "http://127.0.0.1:11333");
    assert_eq!(r.timeout, Duration::from_secs(20));
    assert_eq!(r.max_size, 20 * 1024 * 1024);
    assert_eq!(r.on_failure, HookFailure::Tempfail);
    assert!(r.add_headers && r.password.is_none() && r.settings_id.is_none());
    assert_eq!(r.listeners, HookListener::smtp());
    let c = Config::parse(&format!(
        "{BASE}[rspamd]\naddress = \"unix:/run/rspamd/normal.sock\"\ntimeout = \"8s\"\n\
         password = \"q1\"\nmax_size = 1000\non_failure = \"accept\"\nadd_headers = false\n\
         settings_id = \"inbound\"\n"
    ))
    .unwrap();
    let r = c.rspamd.unwrap();
    assert_eq!(r.address.to_string(), "unix:/run/rspamd/normal.sock");
    assert_eq!(r.on_failure, HookFailure::Accept);
    assert_eq!(r.settings_id.as_deref(), Some("inbound"));
    assert!(!r.add_headers);
}

#[test]
fn a_bad_rspamd_is_told_with_key_and_line() {
    let problems = problems_of("[rspamd]\naddress = \"https://rspamd.example:11333\"\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("line 6: [rspamd] address: an rspamd address is"),
        "{problems:?}"
    );
    let problems = problems_of("[rspamd]\non_failure = \"reject\"\n");
    assert!(
        problems[0].starts_with("line 6: [rspamd] on_failure: unknown variant `reject`"),
        "{problems:?}"
    );
    let problems = problems_of("[rspamd]\nsettings = \"x\"\n");
    assert!(
        problems[0].contains("(did you mean `settings_id`?)"),
        "{problems:?}"
    );
}

#[test]
fn the_defences_parse_with_their_defaults() {
    let c = Config::parse(BASE).unwrap();
    assert!(c.listeners[0].proxy_protocol.is_none());
    let early = c.early_talkers.settings();
    assert_eq!(early, smtp_server::EarlyTalkers::default());
    let helo = c.helo_checks.filter("mx.example.test", Vec::new());
    assert_eq!(
        helo,
        smtp_server::filters::HeloChecks::new("mx.example.test")
    );
    assert!(c.warnings().iter().all(|w| !w.contains("early_talkers")));

    let c = Config::parse(
        "hostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\nmode = \"relay\"\n\
         proxy_protocol = { load_balancers = [\"10.0.0.5/32\", \"2001:db8::/64\"], timeout = \"3s\" }\n\
         [[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\n\
         [early_talkers]\nmode = \"enforce\"\ngreeting_delay = \"6s\"\nlisteners = [\"relay\", \"submission\"]\n\
         pass_ttl = \"2d\"\nfail_ttl = \"30m\"\nmax_cached = 10\n\
         [helo_checks]\nmode = \"off\"\nown_addresses = [\"192.0.2.25\"]\nlisteners = []\n",
    )
    .unwrap();
    let proxy = c.listeners[0].proxy_protocol.as_ref().unwrap();
    let proxy = smtp_server::ProxyProtocol::from(proxy);
    assert_eq!(proxy.load_balancers.len(), 2);
    assert_eq!(proxy.timeout, Duration::from_secs(3));
    assert!(c.listeners[1].proxy_protocol.is_none());
    let early = c.early_talkers.settings();
    assert_eq!(early.mode, smtp_server::FilterMode::Enforce);
    assert_eq!(early.greeting_delay, Duration::from_secs(6));
    assert_eq!(
        early.listeners,
        [
            smtp_server::ListenerMode::Relay,
            smtp_server::ListenerMode::Submission
        ]
    );
    assert_eq!(early.pass_ttl, Duration::from_secs(2 * 86_400));
    assert_eq!(early.fail_ttl, Duration::from_secs(1800));
    assert_eq!(early.max_cached, 10);
    let trusted: Vec<smtp_server::filters::IpNetwork> = vec!["127.0.0.0/8".parse().unwrap()];
    let helo = c.helo_checks.filter("mx.example.test", trusted.clone());
    assert_eq!(helo.mode, smtp_server::FilterMode::Off);
    assert_eq!(helo.own_names, ["mx.example.test"]);
    assert_eq!(
        helo.own_addresses,
        ["192.0.2.25".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(helo.listeners.is_empty());
    assert_eq!(helo.trusted, trusted);
    // The timeout defaults to the library's.
    let c = Config::parse(&format!(
        "{BASE}proxy_protocol = {{ load_balancers = [\"10.0.0.5\"] }}\n"
    ))
    .unwrap();
    let proxy = c.listeners[0].proxy_protocol.as_ref().unwrap();
    assert_eq!(proxy.timeout, smtp_server::ProxyProtocol::default().timeout);
}

#[test]
fn bad_defences_are_told_with_key_and_line() {
    // An empty or missing list of load balancers, a zero timeout.
    let problems = problems_of(
        "proxy_protocol = { load_balancers = [] }\n[[listener]]\naddress = \"127.0.0.1:2587\"\n\
         mode = \"submission\"\nproxy_protocol = { timeout = 0 }\n",
    );
    assert_eq!(
        problems,
        [
            "line 5: [[listener]] proxy_protocol load_balancers: give the load balancers' addresses (e.g. [\"10.0.0.5/32\"]); with none, every connection would be closed",
            "line 9: [[listener]] proxy_protocol load_balancers: give the load balancers' addresses (e.g. [\"10.0.0.5/32\"]); with none, every connection would be closed",
            "line 9: [[listener]] proxy_protocol timeout: must be more than 0",
        ]
    );
    let problems = problems_of("proxy_protocol = { load_balancers = [\"10.0.0.300\"] }\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("line 5: [[listener]] proxy_protocol"),
        "{problems:?}"
    );
    let problems = problems_of("proxy_protocol = { load_balancer = [\"10.0.0.5\"] }\n");
    assert!(
        problems[0].contains("load_balancer") && problems[0].starts_with("line 5:"),
        "{problems:?}"
    );
    // Modes, listeners, durations.
    let problems = problems_of(
        "[early_talkers]\nmode = \"reject\"\n[helo_checks]\nlisteners = [\"sendmail\"]\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("line 6: [early_talkers] mode: unknown variant `reject`"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 8: [helo_checks] listeners"),
        "{problems:?}"
    );
    let problems = problems_of(
        "[early_talkers]\ngreeting_delay = \"soon\"\n[helo_checks]\nown_addresses = [\"mx\"]\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("line 6: [early_talkers] greeting_delay"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 8: [helo_checks] own_addresses"),
        "{problems:?}"
    );
    let problems = problems_of(
        "[early_talkers]\nlisteners = []\n[helo_checks]\nmode = \"enforce\"\nlisteners = []\n",
    );
    assert_eq!(
        problems,
        [
            "line 6: [early_talkers] listeners: give at least one of \"relay\", \"submission\", \"smtps\" (or mode = \"off\")",
            "line 9: [helo_checks] listeners: give at least one of \"relay\", \"submission\", \"smtps\" (or mode = \"off\")",
        ]
    );
    let problems = problems_of("[helo_check]\nmode = \"tag\"\n");
    assert!(
        problems[0].contains("(did you mean `helo_checks`?)"),
        "{problems:?}"
    );
}

#[test]
fn risky_defences_are_warned_about() {
    let c = Config::parse(&format!(
        "{BASE}proxy_protocol = {{ load_balancers = [\"0.0.0.0/0\"] }}\n\
         [early_talkers]\ngreeting_delay = \"2m\"\n"
    ))
    .unwrap();
    let warnings = c.warnings().join("\n");
    assert!(
        warnings.contains("proxy_protocol load_balancers contains 0.0.0.0/0"),
        "{warnings}"
    );
    assert!(
        warnings.contains("[early_talkers] greeting_delay = \"2m\""),
        "{warnings}"
    );
    let c = Config::parse(&format!(
        "{BASE}[early_talkers]\nmode = \"off\"\ngreeting_delay = \"5s\"\n"
    ))
    .unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("greeting_delay with mode = \"off\"")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn the_rate_limits_greylist_and_dns_defences_parse_with_their_defaults() {
    use smtp_server::filters::rate::{Limit, RateSettings};
    let c = Config::parse(BASE).unwrap();
    let trusted: Vec<smtp_server::filters::IpNetwork> = vec!["192.0.2.0/24".parse().unwrap()];
    let rate = c.rate_limits.settings(&trusted);
    let d = RateSettings::default();
    // The library's limits, with the trusted networks and loopback exempt.
    assert_eq!(
        rate,
        RateSettings {
            exempt_networks: vec![
                "192.0.2.0/24".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap()
            ],
            ..d
        }
    );
    let grey = c.greylist.settings(None, &trusted);
    assert_eq!(
        grey,
        smtp_server::filters::greylist::GreylistSettings {
            trusted_networks: trusted,
            ..Default::default()
        }
    );
    assert_eq!(c.greylist.mode, DefenceMode::Off);
    assert_eq!(
        c.greylist_state_file(),
        Path::new(".").join("mta-data/greylist.state")
    );
    assert_eq!(c.dnsbl.settings(), auth_checks::DnsblSettings::default());
    assert_eq!(
        c.reverse_dns.settings(),
        auth_checks::RdnsSettings::default()
    );

    // Every way to write a rate.
    let c = Config::parse(&format!(
        "data_dir = \"/var/lib/mta\"\n{BASE}[rate_limits]\nconnections_per_ip = \"30/1m\"\n\
         messages_per_ip = {{ max = 100, per = \"1h\", mode = \"tag\" }}\nrecipients_per_ip = \"off\"\n\
         messages_per_login = 0\nrecipients_per_login = {{ max = 5, per = 60 }}\nexempt_networks = []\n\
         [rate_limits.failed_logins]\nmax_failures = 3\nlockout = \"1h\"\n\
         [greylist]\nmode = \"enforce\"\ndelay = \"1m\"\nallowlist = [\"198.51.100.0/24\"]\n\
         [dnsbl]\nmode = \"enforce\"\nthreshold = 2\nlists = [\"zen.example=127.0.0.[2..11]*2\", \"wl.example*-5\"]\n\
         [reverse_dns]\nmode = \"off\"\nrequire = \"confirmed\"\n"
    ))
    .unwrap();
    let rate = c.rate_limits.settings(&[]);
    assert_eq!(
        rate.connections_per_ip,
        Limit::new(30, Duration::from_secs(60))
    );
    assert_eq!(
        rate.messages_per_ip,
        Limit {
            mode: smtp_server::FilterMode::Tag,
            ..Limit::new(100, Duration::from_secs(3600))
        }
    );
    assert!(!rate.recipients_per_ip.is_active());
    assert!(!rate.messages_per_login.is_active());
    assert_eq!(
        rate.recipients_per_login,
        Limit::new(5, Duration::from_secs(60))
    );
    assert!(rate.exempt_networks.is_empty());
    assert_eq!(rate.failed_logins_per_ip.max_failures, 3);
    assert_eq!(rate.failed_logins_per_ip.lockout, Duration::from_secs(3600));
    assert_eq!(rate.failed_logins_per_ip.window, Duration::from_secs(900));
    let grey = c.greylist.settings(Some(c.greylist_state_file()), &[]);
    assert_eq!(grey.mode, smtp_server::FilterMode::Enforce);
    assert_eq!(grey.delay, Duration::from_secs(60));
    assert_eq!(grey.allowlist.len(), 1);
    assert_eq!(
        grey.state_file.as_deref(),
        Some(Path::new("/var/lib/mta/greylist.state"))
    );
    let dnsbl = c.dnsbl.settings();
    assert_eq!(dnsbl.mode, auth_checks::Mode::Enforce);
    assert_eq!(dnsbl.threshold, 2);
    assert_eq!(dnsbl.lists[1].weight, -5);
    assert_eq!(c.reverse_dns.settings().mode, auth_checks::Mode::Off);
    assert_eq!(c.reverse_dns.require, auth_checks::Require::Confirmed);
}

#[test]
fn bad_rates_greylist_and_lists_are_told_with_key_and_line() {
    let problems = problems_of(
        "[rate_limits]\nconnections_per_ip = \"60\"\nmessages_per_ip = 5\n\
         recipients_per_ip = { max = 5 }\n",
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "line 6: [rate_limits] connections_per_ip: \"60\": write how many per how long"
        ),
        "{problems:?}"
    );
    let problems = problems_of("[rate_limits]\nmessages_per_ip = 5\n");
    assert!(
        problems[0].starts_with(
            "line 6: [rate_limits] messages_per_ip: 5: write how many per how long (\"5/1h\")"
        ),
        "{problems:?}"
    );
    let problems = problems_of("[rate_limits]\nmessages_per_ip = { max = 5, per = \"0s\" }\n");
    assert!(
        problems[0].contains("[rate_limits] messages_per_ip: 5 per 0 seconds"),
        "{problems:?}"
    );
    let problems = problems_of("[rate_limits]\nmessages_per_ip = \"5/soon\"\n");
    assert!(problems[0].contains("invalid duration"), "{problems:?}");
    let problems = problems_of(
        "[rate_limits]\nmax_tracked = 0\n[rate_limits.failed_rcpts]\ntarpit_after = 5\n\
         disconnect_after = 3\ntarpit_step = 0\n[rate_limits.failed_logins]\nlockout = \"0s\"\n\
         [greylist]\nmode = \"tag\"\nlifetime = 0\nmax_entries = 0\nretry_window = \"5m\"\n\
         [dnsbl]\nthreshold = -1\n",
    );
    assert_eq!(
        problems,
        [
            "line 8: [rate_limits.failed_rcpts] tarpit_after (5) is more than disconnect_after (3): the tarpit would never start",
            "line 10: [rate_limits.failed_rcpts] tarpit_step: must be more than 0 (or tarpit_after = 0: no tarpit)",
            "line 12: [rate_limits.failed_logins] lockout: must be more than 0",
            "line 6: [rate_limits] max_tracked: must be more than 0",
            "line 17: [greylist] retry_window: must be longer than delay (5m): no retry could pass",
            "line 15: [greylist] lifetime: must be more than 0",
            "line 16: [greylist] max_entries: must be more than 0",
            "line 19: [dnsbl] threshold: -1 would list every client (a client no list names scores 0); give 1 or more",
        ]
    );
    // Off, the greylist's values are not checked.
    assert!(Config::parse(&format!("{BASE}[greylist]\nretry_window = 0\n")).is_ok());
    let problems = problems_of("[dnsbl]\nlists = [\"zen.example=127.0.0\"]\n");
    assert!(
        problems[0].starts_with(
            "line 6: [dnsbl] lists: \"zen.example=127.0.0\": DNS list \"127.0.0\": a return code has four octets"
        ),
        "{problems:?}"
    );
    let problems = problems_of("[greylists]\nmode = \"tag\"\n");
    assert!(
        problems[0].contains("(did you mean `greylist`?)"),
        "{problems:?}"
    );
    let c = Config::parse(&format!(
        "{BASE}[dnsbl]\nmode = \"enforce\"\n[rate_limits]\nexempt_networks = [\"0.0.0.0/0\"]\n"
    ))
    .unwrap();
    let warnings = c.warnings().join("\n");
    assert!(
        warnings.contains("with no lists: nothing is checked"),
        "{warnings}"
    );
    assert!(
        warnings.contains("contains 0.0.0.0/0: every client is exempt"),
        "{warnings}"
    );
}

#[test]
fn subaddressing_defaults_to_plus_into_inbox_and_refuses_odd_delimiters() {
    use crate::delivery::SubaddressFolder;
    let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
    assert_eq!(c.local.recipient_delimiter.as_str(), "+");
    assert_eq!(c.local.subaddress_folder, SubaddressFolder::Off);
    let c = Config::parse(&format!(
        "{EMBEDDED_DEFAULT}recipient_delimiter = \"+-\"\nsubaddress_folder = \"existing\"\n"
    ))
    .unwrap();
    assert_eq!(c.local.recipient_delimiter.as_str(), "+-");
    assert_eq!(c.local.subaddress_folder, SubaddressFolder::Existing);
    let c = Config::parse(&format!("{EMBEDDED_DEFAULT}recipient_delimiter = \"\"\n")).unwrap();
    assert_eq!(c.local.recipient_delimiter.as_str(), "");
    for bad in [".", "+=", "/"] {
        let err = Config::parse(&format!(
            "{EMBEDDED_DEFAULT}recipient_delimiter = \"{bad}\"\n"
        ))
        .unwrap_err();
        let told: Vec<String> = err.downcast_ref::<Problems>().unwrap().each().collect();
        assert!(
            told.iter()
                .any(|p| p.contains("[local] recipient_delimiter")
                    && p.contains("cannot be a delimiter")),
            "{bad}: {told:?}"
        );
    }
    assert!(
        Config::parse(&format!(
            "{EMBEDDED_DEFAULT}subaddress_folder = \"always\"\n"
        ))
        .is_err()
    );
}

#[test]
fn mbox_is_an_alternative_to_maildir_and_lmtp() {
    let c = Config::parse(&format!(
        "{BASE}[local]\ndomains = [\"mx.example.test\"]\nmbox = \"/var/mail\"\n"
    ))
    .unwrap();
    assert_eq!(c.local.mbox.as_deref(), Some(Path::new("/var/mail")));
    assert!(c.local.maildir.is_none());
    let both = problems_of(
        "[local]\ndomains = [\"mx.example.test\"]\nmaildir = \"/m\"\nmbox = \"/var/mail\"\n",
    );
    assert_eq!(
        both,
        ["line 8: [local] mbox: give one of maildir, mbox and lmtp, not mbox and maildir"],
        "{both:?}"
    );
    let lmtp = problems_of(
        "[local]\ndomains = [\"mx.example.test\"]\nmbox = \"/var/mail\"\nlmtp = \"127.0.0.1:24\"\n",
    );
    assert_eq!(lmtp.len(), 1, "{lmtp:?}");
    assert!(lmtp[0].ends_with("not mbox and lmtp"), "{lmtp:?}");
}

#[test]
fn destinations_match_a_domain_or_an_mx_host() {
    let c = Config::parse(&format!(
        "{BASE}[[outbound.destination]]\nmx = \"*.mail.protection.example\"\nmax_connections = 2\n\
         tls = \"required\"\ntls_name = \"mail.protection.example\"\nport = 2525\n\
         [[outbound.destination]]\nmatch = \"example.org\"\nrelay = \"gw.example.org\"\n"
    ))
    .unwrap();
    let d = &c.outbound.destination;
    assert_eq!(d[0].mx.as_deref(), Some("*.mail.protection.example"));
    assert_eq!(d[0].pattern, None);
    assert_eq!(d[0].tls_name.as_deref(), Some("mail.protection.example"));
    assert_eq!(d[1].pattern.as_deref(), Some("example.org"));
}

#[test]
fn a_bad_destination_is_told_with_its_entry_line() {
    let problems = problems_of(
        "[[outbound.destination]]\nmatch = \"example.org\"\n\
         [[outbound.destination]]\nmatch = \"a.example\"\nmx = \"mx.a.example\"\n\
         [[outbound.destination]]\nport = 2525\n\
         [[outbound.destination]]\nmx = \"*.mx.example\"\nrelay = \"gw.example\"\n\
         tls = \"opportunistic\"\ntls_name = \"bad name\"\n",
    );
    assert_eq!(
        problems,
        [
            "line 7: [[outbound.destination]] (entry 2): give match (a recipient domain) or mx \
             (an MX host name), not both",
            "line 10: [[outbound.destination]] (entry 3): give match (a recipient domain) or mx \
             (an MX host name), one of them",
            "line 12: [[outbound.destination]] mx = \"*.mx.example\": relay is for a recipient \
             domain (match); an mx entry applies to connections to MX hosts already chosen",
            "line 12: [[outbound.destination]] mx = \"*.mx.example\": tls_name \"bad name\": give \
             a host name (mx.example.net)",
            "line 12: [[outbound.destination]] mx = \"*.mx.example\": tls_name needs tls = \
             \"required\" (a certificate is checked for a name only then)",
        ],
        "{problems:?}"
    );
    // The same pattern as a domain and as an MX host name is two entries, not one twice.
    let c = Config::parse(&format!(
        "{BASE}[[outbound.destination]]\nmatch = \"a.example\"\n\
         [[outbound.destination]]\nmx = \"a.example\"\n"
    ));
    assert!(c.is_ok(), "{c:?}");
    let twice = problems_of(
        "[[outbound.destination]]\nmx = \"*.A.example\"\n\
         [[outbound.destination]]\nmx = \"*.a.example\"\n",
    );
    assert_eq!(twice.len(), 1, "{twice:?}");
    assert!(
        twice[0].starts_with("line 7: ") && twice[0].ends_with("given twice"),
        "{twice:?}"
    );
}

#[test]
fn maildir_sync_delay_defaults_to_5ms_and_is_at_most_a_second() {
    let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
    assert_eq!(c.local.maildir_sync_delay, None, "the default applies");
    let c = Config::parse(&format!("{EMBEDDED_DEFAULT}maildir_sync_delay = \"0s\"\n")).unwrap();
    assert_eq!(c.local.maildir_sync_delay, Some(Duration::ZERO));
    let err =
        Config::parse(&format!("{EMBEDDED_DEFAULT}maildir_sync_delay = \"2s\"\n")).unwrap_err();
    let told: Vec<String> = err.downcast_ref::<Problems>().unwrap().each().collect();
    assert!(
        told.iter()
            .any(|p| p.contains("[local] maildir_sync_delay") && p.contains("at most 1s")),
        "{told:?}"
    );
}
