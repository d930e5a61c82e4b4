//! What the tests of the `mta` binary share: running it, writing configurations,
//! starting a server and talking to it (SMTP through the workspace's raw client,
//! `smtp_client::testing::RawClient`), reading what it delivered.

// Each test file uses a part of this module.
#![allow(dead_code)]

pub(crate) mod outbound;

use std::process::Command;

pub(crate) use smtp_client::testing::RawClient;

pub(crate) fn mta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mta"))
}

/// `mta COMMAND --config FILE` run to its end: (exit code, stdout, stderr).
pub(crate) fn run_with(command: &str, file: &std::path::Path) -> (Option<i32>, String, String) {
    let out = mta()
        .args([command, "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mta COMMAND --config FILE`, which must exit 0; its stdout.
pub(crate) fn run_ok(command: &str, file: &std::path::Path) -> String {
    let (code, stdout, stderr) = run_with(command, file);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    stdout
}

/// `mta check-config` accepts `file`: exit 0, and it says so.
pub(crate) fn assert_config_ok(file: &std::path::Path) {
    let stdout = run_ok("check-config", file);
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}

/// `mta check-config` refuses `file` with exit code 2, telling each of `expected` (a
/// line of its stderr after the file's name and `": "`, such as `"line 11: [[milter]]
/// address: ..."`); its stderr.
pub(crate) fn assert_config_refused(file: &std::path::Path, expected: &[&str]) -> String {
    let (code, _, stderr) = run_with("check-config", file);
    assert_eq!(code, Some(2), "{stderr}");
    let name = file.display();
    for expected in expected {
        let expected = format!("{name}: {expected}");
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
    stderr
}

pub(crate) fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn config(dir: &std::path::Path, listen: &str, extra: &str) -> String {
    format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"{listen}\"\nmode = \"relay\"\n[queue]\npath = \"{}/queue\"\n[local]\ndomains = [\"mx.test\"]\nmaildir = \"{}/maildir\"\n{extra}",
        dir.display(),
        dir.display()
    )
}

/// A loopback address no one listens on (for a moment).
pub(crate) fn free_address() -> String {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().to_string()
}

/// `mta.toml` in `dir`: [`config`] on any port, then `extra`.
pub(crate) fn config_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    write(dir, "mta.toml", &config(dir, "127.0.0.1:0", extra))
}

/// `mta.toml` in `dir` ([`config`] on any port, accepting any user at mx.test).
pub(crate) fn any_user_config(dir: &std::path::Path) -> std::path::PathBuf {
    config_file(
        dir,
        "accept_any_user = true
",
    )
}

/// One SMTP transaction on `addr` (EHLO, MAIL, RCPT..., DATA, QUIT) that must end with
/// the message queued; returns what the server said.
pub(crate) fn smtp_send(addr: &str, from: &str, to: &[&str], message: &str) -> String {
    let addr = addr.parse().unwrap();
    block_on(async {
        let mut c = RawClient::connect(addr).await;
        let mut said = vec![c.greeting.to_string()];
        let mut commands = vec!["EHLO client.test".to_owned(), format!("MAIL FROM:<{from}>")];
        commands.extend(to.iter().map(|rcpt| format!("RCPT TO:<{rcpt}>")));
        commands.push("DATA".to_owned());
        for command in commands {
            said.push(c.cmd(&command).await.to_string());
        }
        assert!(
            said.last().is_some_and(|r| r.starts_with("354")),
            "{}",
            said.join("\n")
        );
        c.send(format!("{message}.\r\n").as_bytes()).await;
        said.push(c.reply().await.to_string());
        said.push(c.cmd("QUIT").await.to_string());
        let said = said.join("\n");
        assert!(said.contains("250 2.0.0 Ok: queued as "), "{said}");
        said
    })
}

/// The queue id in what [`smtp_send`] returns (`250 2.0.0 Ok: queued as ID`).
pub(crate) fn queued_id(said: &str) -> String {
    said.split("queued as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// The text of the log file `path` once it holds `needle` (lines reach the file
/// through the log writer thread, some milliseconds after the event), or as it is
/// after 10 s.
pub(crate) fn log_with(path: &std::path::Path, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) || start.elapsed() > std::time::Duration::from_secs(10) {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// EHLO, MAIL, one RCPT, QUIT on `addr`; returns the reply to RCPT.
pub(crate) fn rcpt_reply(addr: &str, rcpt: &str) -> String {
    let addr = addr.parse().unwrap();
    block_on(async {
        let mut c = RawClient::connect(addr).await;
        c.cmd("EHLO client.test").await;
        c.cmd("MAIL FROM:<me@client.test>").await;
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        c.cmd("QUIT").await;
        reply.to_string()
    })
}

/// Runs `future` to its end on a runtime of its own (these tests are synchronous; the
/// raw SMTP client is async).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The lines of `mta serve`'s banner on `stdout`, up to the one containing `last` (or
/// to its end).
pub(crate) fn read_banner(stdout: &mut impl std::io::BufRead, last: &str) -> String {
    let mut banner = String::new();
    while !banner.contains(last) {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    banner
}

/// Starts `mta serve` on `config`; returns the child and its relay listener's address
/// (from the banner).
pub(crate) fn serve(config: &std::path::Path) -> (std::process::Child, String) {
    serve_logging(config, &[], "warn", std::process::Stdio::inherit())
}

/// `serve` with more arguments, a `RUST_LOG` ("": not set) and where its log (stderr)
/// goes.
pub(crate) fn serve_logging(
    config: &std::path::Path,
    args: &[&str],
    rust_log: &str,
    log: std::process::Stdio,
) -> (std::process::Child, String) {
    serve_program(mta(), config, args, rust_log, log)
}

/// [`serve_logging`] with another program than `mta` (a custom MTA built on
/// `mta_bin::MtaBuilder`).
pub(crate) fn serve_program(
    mut command: Command,
    config: &std::path::Path,
    args: &[&str],
    rust_log: &str,
    log: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::io::BufReader;
    command.args(["serve", "--config"]).arg(config).args(args);
    // An empty `rust_log`: the server's own default filter.
    if rust_log.is_empty() {
        command.env_remove("RUST_LOG");
    } else {
        command.env("RUST_LOG", rust_log);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let banner = read_banner(&mut stdout, "mta: queue in");
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no listener in the banner: {banner}"))
        .to_owned();
    (child, addr)
}

/// Sends SIGTERM and waits for a clean exit.
pub(crate) fn terminate(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

/// `mta queue ARGS` with `config`: (exit code, stdout, stderr).
pub(crate) fn queue_cmd(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = mta()
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids `mta queue list --json ARGS` shows.
pub(crate) fn listed(config: &std::path::Path, args: &[&str]) -> Vec<String> {
    let (code, out, err) = queue_cmd(config, &[&["list", "--json"], args].concat());
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The Maildir files of `user@mx.test` under `dir`, waiting (up to 20 s) for `count`.
pub(crate) fn maildir_files(dir: &std::path::Path, user: &str, count: usize) -> Vec<String> {
    domain_maildir_files(dir, "mx.test", user, count)
}

/// The Maildir files of `user@domain` under `dir/maildir`, waiting (up to 20 s) for
/// `count`, sorted.
pub(crate) fn domain_maildir_files(
    dir: &std::path::Path,
    domain: &str,
    user: &str,
    count: usize,
) -> Vec<String> {
    let new = dir.join("maildir").join(domain).join(user).join("new");
    let start = std::time::Instant::now();
    loop {
        let mut files: Vec<String> = std::fs::read_dir(&new)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|f| std::fs::read_to_string(f.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= count || start.elapsed().as_secs() > 20 {
            files.sort();
            return files;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs a Python script (Debian's `/usr/bin/python3`, standard library) with `args`,
/// which must succeed; returns its stdout.
pub(crate) fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP GET to `addr`; returns the status line and the body.
pub(crate) fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the metric sample `sample` (name and labels, as served) on the
/// `/metrics` endpoint at `addr`; `None` when it is not served.
pub(crate) fn metric(addr: &str, sample: &str) -> Option<f64> {
    http_get(addr, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}
