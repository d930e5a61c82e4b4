//! The `mta` binary as an operator meets it: check-config, and startup errors that are
//! one clear line with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn mta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mta"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &std::path::Path, listen: &str, extra: &str) -> String {
    format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"{listen}\"\nmode = \"relay\"\n[queue]\npath = \"{}/queue\"\n[local]\ndomains = [\"mx.test\"]\nmaildir = \"{}/maildir\"\n{extra}",
        dir.display(),
        dir.display()
    )
}

#[test]
fn check_config_reports_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            "[relay]\ntrusted_networks = [\"0.0.0.0/0\"]\n",
        ),
    );
    let out = mta()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("open relay"),
        "risky settings are warned about: {stdout}"
    );

    let bad = write(
        dir.path(),
        "bad.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            "[limits]\nmax_recipients = \"lots\"\n",
        ),
    );
    let out = mta()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("line 11") && stderr.contains("max_recipients"),
        "{stderr}"
    );
}

#[test]
fn startup_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cases = [
        (config(dir.path(), &addr, ""), "cannot listen on"),
        (
            config(
                dir.path(),
                "127.0.0.1:0",
                &format!(
                    "[tls]\ncertificate = \"{0}/nope.pem\"\nprivate_key = \"{0}/nope.key\"\n",
                    dir.path().display()
                ),
            ),
            "cannot read certificate",
        ),
        ("hostname = 3\n".to_owned(), "hostname"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("c{i}.toml"), text);
        let out = mta()
            .args(["serve", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("mta: error:"))
            .collect();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(expected), "{stderr}");
    }
}
