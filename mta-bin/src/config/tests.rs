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
