//! A custom MTA: the whole `mta` program (every command, the configuration, reload)
//! with two filters of its own. Recipients listed in the file `$BLOCKED_RECIPIENTS` are
//! refused at RCPT; mail from a sender domain listed in `$CUSTOMERS` ("domain name"
//! lines) gets an `X-Customer:` header. Both files are read again at each reload.
//!
//! ```sh
//! cargo run -p mta-bin --example custom_mta -- serve --config mta.toml
//! ```

use smtp_server::{Decision, EnhancedStatus};

fn main() -> std::process::ExitCode {
    mta_bin::MtaBuilder::new()
        .stages(|stages, _config| {
            let blocked = lines("BLOCKED_RECIPIENTS");
            let customers = lines("CUSTOMERS");
            stages
                .rcpt_filter(move |req| {
                    let to = req.to.mailbox()?.as_str();
                    blocked.iter().any(|b| b.eq_ignore_ascii_case(to)).then(|| {
                        Decision::reject::<550>(
                            EnhancedStatus::BAD_DESTINATION_MAILBOX,
                            "This address is closed",
                        )
                    })
                })
                .data_filter(move |req| {
                    let domain = req.envelope.from.mailbox()?.domain();
                    let (_, name) = customers
                        .iter()
                        .filter_map(|l| l.split_once(' '))
                        .find(|(d, _)| d.eq_ignore_ascii_case(domain))?;
                    req.prepend_header("X-Customer", name);
                    None
                })
        })
        .main()
}

/// The lines of the file named by the environment variable `var` (none if unset).
fn lines(var: &str) -> Vec<String> {
    let text = std::env::var_os(var).and_then(|p| std::fs::read_to_string(p).ok());
    text.unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}
