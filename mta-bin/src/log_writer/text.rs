//! The text log line, written lean: a [`TextLayer`] formats each span's fields once,
//! when the span is made (and what is recorded into it later, once), and writes each
//! event straight into one line buffer that goes whole to a [`LineSink`] (the writer
//! thread of [`crate::log_writer`]).
//!
//! The line looks as `tracing_subscriber::fmt`'s full format without colours, so that
//! what operators grep for stays where it was:
//!
//! ```text
//! 2026-11-25T01:06:18.519053Z  INFO smtp.session{session_id=1 peer=127.0.0.1:48832 listener="relay"}:smtp.txn{from=<me@mx.test> rcpts=1 size=25 queue_id=0006610F6F369B8B}: smtp_server::connection: message accepted reply=250 2.0.0 Ok: queued as 0006610F6F369B8B
//! ```
//!
//! timestamp (UTC, microseconds), level, the spans from the outermost with their
//! fields, the target, the message and the event's fields (strings quoted, `%` values
//! as their `Display`). Control characters in values are escaped (`\n`, `\x1b`, ...),
//! so one event is always one line and a value cannot send escape sequences to a
//! terminal. Events that come from the `log` crate show their own target.
//!
//! What it saves over `fmt`: no intermediate `String` per event or per field, no
//! colour handling, no clone of the writer per line, and a timestamp whose date and
//! second are formatted once per second per thread.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Where whole lines go: each call gets one line, ending in `\n`.
pub trait LineSink: Send + Sync + 'static {
    /// Takes one line (it ends in `\n`).
    fn write_line(&self, line: Vec<u8>);
}

/// Writes each line to stderr where it happens (when there is no writer thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl LineSink for Stderr {
    fn write_line(&self, line: Vec<u8>) {
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = std::io::Stderr;

    fn make_writer(&'a self) -> std::io::Stderr {
        std::io::stderr()
    }
}

/// A `tracing_subscriber` layer (over a `Registry`) writing one text line per event
/// to a [`LineSink`].
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tracing_subscriber::layer::SubscriberExt;
/// use mta_bin::log_writer::text::{LineSink, TextLayer};
///
/// #[derive(Clone, Default)]
/// struct Lines(Arc<Mutex<Vec<String>>>);
/// impl LineSink for Lines {
///     fn write_line(&self, line: Vec<u8>) {
///         self.0.lock().unwrap().push(String::from_utf8(line).unwrap());
///     }
/// }
///
/// let lines = Lines::default();
/// let subscriber = tracing_subscriber::registry().with(TextLayer::new(lines.clone()));
/// tracing::subscriber::with_default(subscriber, || {
///     let span = tracing::info_span!("smtp.session", session_id = 7u64);
///     span.in_scope(|| tracing::info!(target: "mta", result = "sent", "delivery"));
/// });
/// let line = &lines.0.lock().unwrap()[0];
/// assert!(line.ends_with(" INFO smtp.session{session_id=7}: mta: delivery result=\"sent\"\n"), "{line}");
/// ```
#[derive(Debug)]
pub struct TextLayer<W> {
    sink: W,
}

impl<W: LineSink> TextLayer<W> {
    /// Writes lines to `sink`.
    pub fn new(sink: W) -> Self {
        TextLayer { sink }
    }
}

/// A span's fields, formatted (`a=1 b="x"`).
struct SpanFields(Vec<u8>);

impl<S, W> Layer<S> for TextLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: LineSink,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // Room for the fields as the server's spans have them, so that formatting
        // them does not grow the buffer again and again.
        let mut fields = Fields::new(Vec::with_capacity(32 * attrs.fields().len()));
        attrs.record(&mut fields);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(existing) => existing.0 = fields.out,
            None => extensions.insert(SpanFields(fields.out)),
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(existing) => {
                let mut fields = Fields::new(std::mem::take(&mut existing.0));
                values.record(&mut fields);
                existing.0 = fields.out;
            }
            None => {
                let mut fields = Fields::new(Vec::new());
                values.record(&mut fields);
                extensions.insert(SpanFields(fields.out));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // One buffer per thread, copied out at its exact length; a fresh one if an
        // event is logged while formatting another (a `Display` that logs).
        thread_local! {
            static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                format_event(&mut buf, event, &ctx);
                self.sink.write_line(buf.as_slice().to_vec());
            }
            Err(_) => {
                let mut line = Vec::with_capacity(256);
                format_event(&mut line, event, &ctx);
                self.sink.write_line(line);
            }
        });
    }
}

/// Writes `event`'s line into `out`.
fn format_event<S>(out: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    push_timestamp(out);
    out.extend_from_slice(match *meta.level() {
        Level::TRACE => b" TRACE ",
        Level::DEBUG => b" DEBUG ",
        Level::INFO => b"  INFO ",
        Level::WARN => b"  WARN ",
        Level::ERROR => b" ERROR ",
    });
    if let Some(scope) = ctx.event_scope(event) {
        let mut seen = false;
        for span in scope.from_root() {
            seen = true;
            out.extend_from_slice(span.name().as_bytes());
            let extensions = span.extensions();
            if let Some(SpanFields(fields)) = extensions.get::<SpanFields>()
                && !fields.is_empty()
            {
                out.push(b'{');
                out.extend_from_slice(fields);
                out.push(b'}');
            }
            out.push(b':');
        }
        if seen {
            out.push(b' ');
        }
    }
    // An event from the `log` crate: its target is a field.
    let from_log = meta.target() == "log" && meta.fields().field("log.target").is_some();
    if from_log {
        let mut target = LogTarget(None);
        event.record(&mut target);
        match target.0 {
            Some(t) => push_escaped(out, &t),
            None => out.extend_from_slice(b"log"),
        }
    } else {
        out.extend_from_slice(meta.target().as_bytes());
    }
    out.extend_from_slice(b": ");
    let mut fields = Fields::new(std::mem::take(out));
    fields.first = true;
    event.record(&mut fields);
    *out = fields.out;
    out.push(b'\n');
}

/// Formats fields as `name=value`, separated by a space; `message` as its text alone.
struct Fields {
    out: Vec<u8>,
    /// No separator before the next field.
    first: bool,
}

impl Fields {
    fn new(out: Vec<u8>) -> Self {
        let first = out.is_empty();
        Fields { out, first }
    }

    /// Writes the separator and `name=`; false for a field not to write.
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'=');
        }
        true
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        if field.name() == "message" {
            push_escaped(&mut self.out, value);
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            let _ = write!(Escaping(&mut self.out), "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            push_u64(&mut self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field) {
            if value < 0 {
                self.out.push(b'-');
            }
            push_u64(&mut self.out, value.unsigned_abs());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        let mut w = Escaping(&mut self.out);
        let _ = write!(w, "{value}");
        if let Some(source) = value.source() {
            let name = field.name();
            let name = name.strip_prefix("r#").unwrap_or(name);
            let _ = write!(w, " {name}.sources=[{source}");
            let mut next = source.source();
            while let Some(e) = next {
                let _ = write!(w, ", {e}");
                next = e.source();
            }
            let _ = w.write_char(']');
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.start(field) {
            let _ = write!(Escaping(&mut self.out), "{value:?}");
        }
    }
}

/// Picks the `log.target` field of an event from the `log` crate.
struct LogTarget(Option<String>);

impl Visit for LogTarget {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// A `fmt::Write` into a line that escapes control characters.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Appends `s` with its control characters escaped (except tab): `\n`, `\r`, `\x1b`,
/// `\u{85}`, ... 0xC2 leads every C1 control character in UTF-8.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '\t' => out.push(b'\t'),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(Raw(out), "\\x{:02x}", c as u32);
            }
            '\u{80}'..='\u{9f}' => {
                let _ = write!(Raw(out), "\\u{{{:x}}}", c as u32);
            }
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// A `fmt::Write` into a line, as is.
struct Raw<'a>(&'a mut Vec<u8>);

impl fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `n` in decimal (itoa: no formatter machinery on the log path).
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the time now as `2026-11-25T01:06:18.519053Z`, the date and second
/// formatted once per second on each thread.
fn push_timestamp(out: &mut Vec<u8>) {
    thread_local! {
        /// The second and its text up to the `.`.
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let now = std::time::SystemTime::now();
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        out.extend_from_slice(b"(clock before 1970)");
        return;
    };
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        match second_text(now) {
            Some(formatted) => text = formatted,
            // Past the year 9999: no cache.
            None => {
                let _ = write!(Raw(out), "{secs}.{micros:06}");
                return;
            }
        }
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let mut frac = [b'0'; 7];
    let mut m = micros;
    for digit in frac[..6].iter_mut().rev() {
        *digit = b'0' + (m % 10) as u8;
        m /= 10;
    }
    frac[6] = b'Z';
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS.` of `time` (after 1970), up to the year 9999.
fn second_text(time: std::time::SystemTime) -> Option<[u8; 20]> {
    // humantime's `Display` fails past 9999 (and `write_fmt` would then panic).
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    if secs >= 253_402_300_800 {
        return None;
    }
    // `2025-11-25T01:06:18Z`: twenty bytes, the last replaced by the `.`.
    let mut text = [0u8; 20];
    let mut w = &mut text[..];
    std::io::Write::write_fmt(
        &mut w,
        format_args!("{}", humantime::format_rfc3339_seconds(time)),
    )
    .ok()?;
    if !w.is_empty() {
        return None;
    }
    text[19] = b'.';
    Some(text)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl LineSink for Lines {
        fn write_line(&self, line: Vec<u8>) {
            self.0.lock().unwrap().extend_from_slice(&line);
        }
    }

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        /// The lines without their timestamps.
        fn text(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap();
            String::from_utf8(bytes.clone())
                .unwrap()
                .lines()
                .map(|l| l.split_once(' ').unwrap().1.to_owned())
                .collect()
        }
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk on fire")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    /// What the server logs, in the shapes it logs it.
    fn log_a_session() {
        let peer: std::net::SocketAddr = "127.0.0.1:48832".parse().unwrap();
        let session = tracing::info_span!("smtp.session", session_id = 12u64, peer = %peer, listener = "relay");
        let _in = session.enter();
        tracing::info!("connected");
        let txn = tracing::info_span!("smtp.txn", from = %"<me@mx.test>", rcpts = 2usize, size = 1024usize, queue_id = tracing::field::Empty);
        txn.record("queue_id", tracing::field::display("0006610F6F369B8B"));
        txn.in_scope(|| {
            tracing::info!(reply = %"250 2.0.0 Ok: queued as 0006610F6F369B8B", "message accepted");
            tracing::warn!(delta = -3i64, tls = false, ratio = 0.5f64, list = ?["a", "b"], r#type = "x", "odd {} shapes", 2);
            let e = Outer(Inner);
            tracing::error!(error = &e as &(dyn std::error::Error + 'static), "failed");
            tracing::debug!(quote = "say \"hi\"", "quoted");
        });
        let empty = tracing::info_span!("queue.idle");
        empty.in_scope(|| tracing::info!(to = %"<you@mx.test>", result = "delivered", "delivery"));
        drop(_in);
        tracing::info!(target: "custom::target", "outside");
    }

    /// Every line is the line `tracing_subscriber::fmt` writes without colours, but for
    /// its timestamp.
    #[test]
    fn lines_match_fmt_without_colours() {
        let fmt_lines = Lines::default();
        let writer = fmt_lines.clone();
        let fmt = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(fmt, log_a_session);

        let lean_lines = Lines::default();
        let lean = tracing_subscriber::registry().with(TextLayer::new(lean_lines.clone()));
        tracing::subscriber::with_default(lean, log_a_session);

        let (fmt_lines, lean_lines) = (fmt_lines.text(), lean_lines.text());
        assert_eq!(lean_lines.len(), 7, "{lean_lines:#?}");
        assert_eq!(lean_lines, fmt_lines);
        assert!(
            lean_lines[1].starts_with(" INFO smtp.session{session_id=12 peer=127.0.0.1:48832 listener=\"relay\"}:smtp.txn{from=<me@mx.test> rcpts=2 size=1024 queue_id=0006610F6F369B8B}: "),
            "{}",
            lean_lines[1]
        );
    }

    /// The timestamp is the UTC time of the event, with microseconds.
    #[test]
    fn lines_start_with_the_time() {
        let lines = Lines::default();
        let lean = tracing_subscriber::registry().with(TextLayer::new(lines.clone()));
        let before = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        tracing::subscriber::with_default(lean, || tracing::info!("now"));
        let after = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let (time, rest) = text.split_once(' ').unwrap();
        assert_eq!(time.len(), before.len(), "{text}");
        assert!(
            before.as_str() <= time && time <= after.as_str(),
            "{before} {text} {after}"
        );
        assert!(rest.starts_with(" INFO "), "{text}");
    }

    /// A value cannot break a line in two or send escape sequences to a terminal.
    #[test]
    fn values_stay_on_one_line() {
        let lines = Lines::default();
        let lean = tracing_subscriber::registry().with(TextLayer::new(lines.clone()));
        tracing::subscriber::with_default(
            lean,
            || tracing::info!(detail = %"550 no\r\n250 \x1b[2Jyes", "delivery\nforged line"),
        );
        let text = lines.text();
        assert_eq!(
            text,
            [
                " INFO mta_bin::log_writer::text::tests: delivery\\nforged line detail=550 no\\r\\n250 \\x1b[2Jyes"
            ]
        );
    }

    #[test]
    fn the_date_part_is_rfc3339_up_to_the_year_9999() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(
            second_text(at(1_764_032_778)).as_ref().map(|t| &t[..]),
            Some(&b"2025-11-25T01:06:18."[..])
        );
        assert_eq!(
            second_text(at(253_402_300_799)).as_ref().map(|t| &t[..]),
            Some(&b"9999-12-31T23:59:59."[..])
        );
        assert_eq!(second_text(at(253_402_300_800)), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        push_escaped(&mut out, "a\nb\r\x1b[31m\tc\u{85}é");
        assert_eq!(out, "a\\nb\\r\\x1b[31m\tc\\u{85}é".as_bytes());
    }

    #[test]
    fn numbers_are_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
