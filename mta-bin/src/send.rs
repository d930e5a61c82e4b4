//! `mta send`: a correct MIME message from the command line, for quick tests and
//! scripts, queued like `mta sendmail` queues. mail-builder writes the message (the
//! encodings, the line lengths, RFC 2047 and RFC 2231); the addresses are checked
//! first, so that no header can be injected through them.
//!
//! ```
//! use mta_bin::send::{Attachment, Draft};
//! let draft = Draft {
//!     from: "ops@example.org".into(),
//!     to: vec!["dev@example.org".into()],
//!     subject: "Nightly build".into(),
//!     text: "All green.\n".into(),
//!     attachments: vec![Attachment { name: "log.txt".into(), content: b"ok\n".to_vec() }],
//! };
//! let message = String::from_utf8(draft.build().unwrap()).unwrap();
//! assert!(message.contains("Content-Type: multipart/mixed"));
//! assert!(message.contains("filename=\"log.txt\""));
//! assert!(Draft { from: "a@b.test\r\nBcc: x@y.test".into(), ..draft }.build().is_err());
//! ```

use mail_builder::MessageBuilder;

/// A file to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The file name shown to the recipient.
    pub name: String,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// What `mta send` puts together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// The sender (also the envelope sender).
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// The subject (any UTF-8).
    pub subject: String,
    /// The text.
    pub text: String,
    /// Files to attach.
    pub attachments: Vec<Attachment>,
}

impl Draft {
    /// The message: `From`, `To`, `Subject`, `Date`, `Message-ID`, `MIME-Version` and
    /// the content (the text alone, or `multipart/mixed` with the attachments). An
    /// address that is not one (or holds a line break) is refused.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let from = checked_address(&self.from)?;
        let to = self
            .to
            .iter()
            .map(|t| checked_address(t))
            .collect::<Result<Vec<_>, _>>()?;
        let subject: String = self.subject.chars().filter(|c| !c.is_control()).collect();
        let mut message = MessageBuilder::new()
            .from(from.as_str())
            .to(to.iter().map(String::as_str).collect::<Vec<_>>())
            .subject(subject)
            .text_body(self.text.replace("\r\n", "\n"));
        for a in &self.attachments {
            message =
                message.attachment(content_type(&a.name), a.name.as_str(), a.content.as_slice());
        }
        message
            .write_to_vec()
            .map_err(|e| format!("cannot write the message: {e}"))
    }
}

/// `address` if it is one mail address (`user@domain`, no display name, no line
/// break), as RFC 5321 reads it.
fn checked_address(address: &str) -> Result<String, String> {
    if address.chars().any(char::is_control) {
        return Err(format!(
            "{address:?} is not a mail address (it holds a line break or control character)"
        ));
    }
    let address = address.trim();
    smtp_proto::Mailbox::parse(address)
        .map(|m| m.to_string())
        .map_err(|_| format!("{address:?} is not a mail address (write user@example.org)"))
}

/// A content type from the file name's extension.
fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "log") => "text/plain",
        Some("csv") => "text/csv",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    }
}

/// `mta send`'s options.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The sender.
    #[arg(long)]
    pub from: String,
    /// A recipient (repeat for more).
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// The subject.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The text; without it, standard input when it is not a terminal.
    #[arg(long)]
    pub text: Option<String>,
    /// A file to attach (repeat for more).
    #[arg(long)]
    pub attach: Vec<std::path::PathBuf>,
    /// The configuration file (default: $MTA_CONFIG, else /etc/mta/mta.toml if it
    /// exists, else the embedded default).
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
}

/// Runs `mta send`; returns the exit status (sendmail's: 0, 64 or 75).
pub fn run(args: SendArgs, custom: &crate::MtaBuilder) -> u8 {
    use crate::sendmail::{EX_USAGE, Options};
    let fail = |status: u8, e: String| {
        eprintln!("mta send: {e}");
        status
    };
    let text = match args.text {
        Some(text) => text,
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => String::new(),
        None => {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                return fail(EX_USAGE, format!("cannot read the text: {e}"));
            }
            text
        }
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        let name = path.file_name().map_or_else(
            || "attachment".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        match std::fs::read(path) {
            Ok(content) => attachments.push(Attachment { name, content }),
            Err(e) => return fail(EX_USAGE, format!("{}: {e}", path.display())),
        }
    }
    let draft = Draft {
        from: args.from.clone(),
        to: args.to.clone(),
        subject: args.subject,
        text,
        attachments,
    };
    let message = match draft.build() {
        Ok(message) => message,
        Err(e) => return fail(EX_USAGE, e),
    };
    let options = Options {
        sender: Some(args.from),
        recipients: args.to,
        config: args.config,
        ..Options::default()
    };
    match crate::sendmail::load_config(&options)
        .and_then(|config| crate::sendmail::submit(&config, &options, &message, custom))
    {
        Ok(id) => {
            println!("queued as {id}");
            0
        }
        Err((status, e)) => fail(status, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            from: "ops@example.org".into(),
            to: vec!["dev@example.org".into()],
            subject: "Grüße".into(),
            text: "hé\n".into(),
            attachments: Vec::new(),
        }
    }

    #[test]
    fn long_lines_and_non_ascii_are_encoded_within_998_bytes() {
        let mut d = draft();
        d.text = format!("{}\n", "x".repeat(5000));
        d.attachments.push(Attachment {
            name: "résumé.pdf".into(),
            content: vec![0xff; 3000],
        });
        let message = String::from_utf8(d.build().unwrap()).unwrap();
        assert!(message.lines().all(|l| l.len() <= 998), "{message}");
        assert!(
            !message.contains("Grüße"),
            "the subject is encoded: {message}"
        );
        assert!(
            message.contains("r%C3%A9sum%C3%A9.pdf") || message.contains("=?utf-8?"),
            "{message}"
        );
        assert_eq!(content_type("x.PNG"), "image/png");
        assert_eq!(content_type("x"), "application/octet-stream");
    }

    #[test]
    fn addresses_that_are_not_one_are_refused() {
        for bad in [
            "a@b.test\r\nBcc: victim@x.test",
            "not an address",
            "a@b.test\n",
            "Ann <a@b.test>",
        ] {
            let mut d = draft();
            d.to = vec![bad.into()];
            assert!(d.build().is_err(), "to {bad:?}");
            let mut d = draft();
            d.from = bad.into();
            assert!(d.build().is_err(), "from {bad:?}");
        }
    }
}
