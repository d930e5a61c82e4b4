//! `mta send`: a correct MIME message from the command line, for quick tests and
//! scripts, queued like `mta sendmail` queues.
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
//! let message = String::from_utf8(draft.build("b1")).unwrap();
//! assert!(message.contains("Content-Type: multipart/mixed; boundary=\"b1\""));
//! assert!(message.contains("Content-Disposition: attachment; filename=\"log.txt\""));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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
    /// The subject (any UTF-8; encoded per RFC 2047 when not ASCII).
    pub subject: String,
    /// The text (line endings become CRLF).
    pub text: String,
    /// Files to attach.
    pub attachments: Vec<Attachment>,
}

impl Draft {
    /// The message: header fields `From`, `To`, `Subject`, `MIME-Version` and the
    /// content (text alone, or `multipart/mixed` with the attachments, separated by
    /// `boundary`). `Date` and `Message-ID` are added when it is queued.
    pub fn build(&self, boundary: &str) -> Vec<u8> {
        let mut out = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nMIME-Version: 1.0\r\n",
            self.from,
            self.to.join(", "),
            encode_word(&self.subject)
        );
        if self.attachments.is_empty() {
            out.push_str(&text_part(&self.text));
            return out.into_bytes();
        }
        out.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\nThis is a message in MIME format.\r\n"
        ));
        out.push_str(&format!("--{boundary}\r\n"));
        out.push_str(&text_part(&self.text));
        for a in &self.attachments {
            out.push_str(&format!(
                "--{boundary}\r\nContent-Type: {}\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; {}\r\n\r\n",
                content_type(&a.name),
                filename_param(&a.name)
            ));
            out.push_str(&base64_lines(&a.content));
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        out.into_bytes()
    }
}

/// The header of a text part and its body: 7bit when ASCII, else base64 of UTF-8 (safe
/// through servers without 8BITMIME).
fn text_part(text: &str) -> String {
    let mut crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    if !crlf.ends_with("\r\n") {
        crlf.push_str("\r\n");
    }
    if crlf.is_ascii() {
        format!(
            "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{crlf}"
        )
    } else {
        format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            base64_lines(crlf.as_bytes())
        )
    }
}

/// Base64 in lines of 76 characters (RFC 2045 §6.8), each ending in CRLF.
fn base64_lines(bytes: &[u8]) -> String {
    let encoded = STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

/// A header value: as is when printable ASCII, else one RFC 2047 encoded word per
/// chunk of at most 45 bytes (whole characters).
fn encode_word(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.is_ascii() {
        return clean;
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in clean.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", STANDARD.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// `filename="..."`, or RFC 2231 `filename*=UTF-8''...` for other names.
fn filename_param(name: &str) -> String {
    if name.is_ascii() && !name.contains(['"', '\\']) && !name.chars().any(char::is_control) {
        return format!("filename=\"{name}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filename*=UTF-8''{encoded}")
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
pub fn run(args: SendArgs) -> u8 {
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let boundary = format!("=_mta_{now:x}_{}", std::process::id());
    let options = Options {
        sender: Some(args.from),
        recipients: args.to,
        config: args.config,
        ..Options::default()
    };
    match crate::sendmail::load_config(&options)
        .and_then(|config| crate::sendmail::submit(&config, &options, &draft.build(&boundary)))
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

    #[test]
    fn non_ascii_subject_text_and_file_names_are_encoded() {
        assert_eq!(encode_word("Report"), "Report");
        assert_eq!(encode_word("Grüße"), "=?UTF-8?B?R3LDvMOfZQ==?=");
        let long = encode_word(&"é".repeat(40));
        assert_eq!(long.matches("=?UTF-8?B?").count(), 2, "{long}");
        assert_eq!(filename_param("a.txt"), "filename=\"a.txt\"");
        assert_eq!(
            filename_param("résumé.pdf"),
            "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
        assert!(
            text_part("hé\n")
                .contains("charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\naMOpDQo=\r\n")
        );
        assert!(text_part("hi").ends_with("\r\n\r\nhi\r\n"));
        let lines = base64_lines(&[0u8; 100]);
        assert!(lines.lines().all(|l| l.len() <= 76), "{lines}");
        assert_eq!(content_type("x.PNG"), "image/png");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
