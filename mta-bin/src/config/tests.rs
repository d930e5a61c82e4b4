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
         default_action = \"accept\"\npolicy_context = \"spf\"\nask_trusted = true\n"
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
