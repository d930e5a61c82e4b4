//! `mta queue ...`: inspect and steer the queue, through the control socket of a running
//! `mta serve`, or on the queue directly when no server runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mail_queue::{AGE_BUCKETS_MINUTES, Action, ActionResult, MessageState, Queue, Summary};

use crate::config::{Config, parse_duration};
use crate::control::{self, Filter, MessageView, Request, Response};
use mail_queue::QueueId;
use std::time::Duration;

/// `mta queue` and its options.
#[derive(Args, Debug)]
pub struct QueueArgs {
    /// The configuration file of the server (default: $MTA_CONFIG, else
    /// /etc/mta/mta.toml if it exists, else the embedded default, whose queue is
    /// ./mta-data/queue).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue commands.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List messages, oldest first: id, state, age, size, sender, each recipient with
    /// its state and last reply, next attempt, last error.
    List {
        /// Only messages with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages whose sender contains this (`<>`: the null sender).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only messages at least this old (`30m`, `2h`, `1d`).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One message: envelope, recipients and their last replies, and its header.
    Show {
        /// The queue id.
        #[arg(value_parser = parse_id)]
        id: QueueId,
        /// The whole message, not only its header.
        #[arg(long)]
        body: bool,
    },
    /// Stop delivering messages until they are released.
    Hold(Targets),
    /// Release held messages: they are tried at once.
    Release(Targets),
    /// Try messages now (all when none is named).
    Flush(FlushTargets),
    /// Remove messages silently.
    Delete(Targets),
    /// Give up on messages: the sender gets a failure notification.
    Bounce(Targets),
    /// Counts and sizes by state, age and destination domain (like Postfix's qshape).
    Summary,
}

/// Messages named by id, or every message.
#[derive(Args, Debug)]
pub struct Targets {
    /// Queue ids.
    #[arg(required_unless_present = "all", value_parser = parse_id)]
    pub ids: Vec<QueueId>,
    /// Every message in the queue.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
}

/// `flush`: ids, a domain, or (with neither) every message.
#[derive(Args, Debug)]
pub struct FlushTargets {
    /// Queue ids.
    #[arg(value_parser = parse_id)]
    pub ids: Vec<QueueId>,
    /// The messages with a pending recipient in this domain.
    #[arg(long, conflicts_with = "ids")]
    pub domain: Option<String>,
}

/// `--state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Waiting for its first attempt.
    Queued,
    /// Being delivered now.
    Active,
    /// Tried, to be tried again.
    Deferred,
    /// On hold.
    #[value(alias = "hold")]
    Held,
}

impl From<StateArg> for MessageState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Queued => Self::Queued,
            StateArg::Active => Self::Active,
            StateArg::Deferred => Self::Deferred,
            StateArg::Held => Self::Held,
        }
    }
}

/// A queue id: 16 hexadecimal digits, as `mta queue list` shows them.
fn parse_id(id: &str) -> Result<QueueId, String> {
    id.trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a queue id (16 hexadecimal digits)"))
}

/// Runs `mta queue ...`; returns whether every named message was found.
pub fn run(args: QueueArgs) -> anyhow::Result<bool> {
    let config = Config::find(args.config.as_deref())?;
    let request = request(&args.command)?;
    let filtered = matches!(&request, Request::List { filter, .. } if *filter != Filter::default());
    let response = match control::request(&control::socket_path(&config.queue.path), &request)? {
        Some(response) => response,
        None => offline(&config, request, &crate::MtaBuilder::new())?,
    };
    let mut out = String::new();
    let ok = match &response {
        Response::Error { message } => bail!("{message}"),
        Response::Results { results } => results.iter().all(|(_, r)| *r != ActionResult::NotFound),
        _ => true,
    };
    if args.json {
        out = serde_json::to_string_pretty(&response)?;
        out.push('\n');
    } else {
        render(&mut out, &response, filtered);
    }
    print!("{out}");
    Ok(ok)
}

fn request(command: &QueueCommand) -> anyhow::Result<Request> {
    let ids = |ids: &[QueueId]| ids.iter().map(ToString::to_string).collect();
    let act = |action, t: &Targets| Request::Act {
        action,
        ids: ids(&t.ids),
        all: t.all,
        domain: None,
    };
    Ok(match command {
        QueueCommand::List {
            domain,
            sender,
            state,
            older_than,
            limit,
        } => Request::List {
            filter: Filter {
                domain: domain.clone(),
                sender: sender.clone(),
                state: state.map(MessageState::from),
                min_age: older_than.map(|d| d.as_secs()),
            },
            limit: *limit,
        },
        QueueCommand::Show { id, body } => Request::Show {
            id: id.to_string(),
            body: *body,
        },
        QueueCommand::Hold(t) => act(Action::Hold, t),
        QueueCommand::Release(t) => act(Action::Release, t),
        QueueCommand::Delete(t) => act(Action::Delete, t),
        QueueCommand::Bounce(t) => act(Action::Bounce, t),
        QueueCommand::Flush(t) => Request::Act {
            action: Action::Flush,
            ids: ids(&t.ids),
            all: t.ids.is_empty() && t.domain.is_none(),
            domain: t.domain.clone(),
        },
        QueueCommand::Summary => Request::Summary,
    })
}

/// No server runs: open the queue here (its lock fails if a server holds it after all).
/// Also the way `mta sendmail` queues without a server.
pub(crate) fn offline(
    config: &Config,
    request: Request,
    custom: &crate::MtaBuilder,
) -> anyhow::Result<Response> {
    let path = &config.queue.path;
    // A message may start a queue; the other commands need one.
    if !path.exists() && !matches!(request, Request::Inject { .. }) {
        bail!("no queue at {} (and no server running)", path.display());
    }
    // Root works on the queue as the server's user, so that what it writes stays
    // writable by the server.
    if let Some(name) = &config.user
        && nix::unistd::Uid::effective().is_root()
    {
        let user = crate::privileges::RunAs::lookup(name)?;
        user.prepare_dir(path)?;
        user.switch()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let queue = Queue::open(crate::serve::queue_config(config))
            .with_context(|| format!("cannot open the queue at {}", path.display()))?;
        // Injected mail meets the filters it would meet in the server.
        let stages = crate::serve::local_stages(config, &queue, custom)?;
        let hooks = control::Hooks {
            reload: None,
            stages: std::sync::Arc::new(std::sync::RwLock::new(stages)),
            max_message: crate::serve::max_message_size(config),
        };
        let user = format!("userid {}", nix::unistd::getuid());
        Ok(control::handle(&queue, request, &hooks, &user).await)
    })
}

/// `filtered`: the request named a domain, sender, state or age.
fn render(out: &mut String, response: &Response, filtered: bool) {
    match response {
        Response::Messages { messages, matched } => {
            if messages.is_empty() {
                let text = if filtered || *matched > 0 {
                    "No message in the queue matches."
                } else {
                    "The queue is empty."
                };
                let _ = writeln!(out, "{text}");
                return;
            }
            for m in messages {
                render_message(out, m);
            }
            let _ = writeln!(out, "-- {} of {matched} messages", messages.len());
        }
        Response::Message { message, content } => {
            render_message(out, message);
            let _ = writeln!(
                out,
                "  source: {}; attempts: {}",
                message.source, message.attempts
            );
            let _ = writeln!(out);
            out.push_str(&content.replace("\r\n", "\n"));
        }
        Response::Results { results } => {
            let mut done = 0;
            for (id, result) in results {
                let text = match result {
                    ActionResult::Done => {
                        done += 1;
                        "done".to_owned()
                    }
                    ActionResult::AfterAttempt => {
                        "being delivered: applied when this attempt ends".to_owned()
                    }
                    ActionResult::Unchanged(why) => format!("unchanged ({why})"),
                    ActionResult::NotFound => "not in the queue".to_owned(),
                };
                let _ = writeln!(out, "{id}: {text}");
            }
            let _ = writeln!(out, "-- {done} of {} messages changed", results.len());
        }
        Response::Tally { tally } => {
            let _ = writeln!(out, "{} messages changed", tally.done);
            if tally.after_attempt > 0 {
                let _ = writeln!(
                    out,
                    "{} being delivered: changed when their attempt ends",
                    tally.after_attempt
                );
            }
            for (why, n) in &tally.unchanged {
                let _ = writeln!(out, "{n} unchanged ({why})");
            }
            if tally.not_found > 0 {
                let _ = writeln!(out, "{} left the queue meanwhile", tally.not_found);
            }
        }
        Response::Summary { summary } => render_summary(out, summary),
        Response::Queued { id } => {
            let _ = writeln!(out, "queued as {id}");
        }
        Response::Reloaded => {
            let _ = writeln!(out, "configuration reloaded");
        }
        Response::Error { message } => {
            let _ = writeln!(out, "error: {message}");
        }
        Response::Refused { message, .. } => {
            let _ = writeln!(out, "refused: {message}");
        }
    }
}

fn render_message(out: &mut String, m: &MessageView) {
    let from = if m.from.is_empty() { "<>" } else { &m.from };
    let state = format!("{:?}", m.state).to_ascii_lowercase();
    let _ = writeln!(
        out,
        "{}  {state:<8}  {:>7}  {:>9}  {from}",
        m.id,
        age(m.age),
        m.size
    );
    for r in &m.recipients {
        let reply = r
            .last_reply
            .as_deref()
            .map(|t| format!("  ({t})"))
            .unwrap_or_default();
        let _ = writeln!(out, "    {:<9}  {}{reply}", r.state, r.address);
    }
    let now = m.received + m.age;
    match m.next_attempt {
        None => {
            let _ = writeln!(out, "  held: not tried until released");
        }
        Some(at) if m.state == MessageState::Deferred => {
            let _ = writeln!(
                out,
                "  next attempt in {}; last error: {}",
                age(at.saturating_sub(now)),
                m.last_error.as_deref().unwrap_or("none")
            );
        }
        Some(_) => {}
    }
}

fn render_summary(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "{} messages, {} bytes", s.messages, s.bytes);
    let states: Vec<String> = s.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "by state: {}", states.join(", "));
    let _ = writeln!(out);
    let mut header = format!("{:<30} {:>7} {:>7}", "domain (minutes)", "T", "bytes");
    for limit in AGE_BUCKETS_MINUTES {
        let _ = write!(header, " {:>6}", format!("<{limit}"));
    }
    let _ = write!(header, " {:>6}", "older");
    let _ = writeln!(out, "{header}");
    let line = |out: &mut String, name: &str, messages: u64, bytes: u64, ages: &[u64]| {
        let _ = write!(out, "{name:<30} {messages:>7} {bytes:>7}");
        for n in ages {
            let _ = write!(out, " {n:>6}");
        }
        let _ = writeln!(out);
    };
    line(out, "TOTAL", s.messages, s.bytes, &s.by_age);
    let mut domains: Vec<_> = s.domains.iter().collect();
    domains.sort_by(|a, b| b.1.messages.cmp(&a.1.messages).then(a.0.cmp(b.0)));
    for (domain, d) in domains {
        let name = if domain.is_empty() {
            "(postmaster)"
        } else {
            domain
        };
        line(out, name, d.messages, d.bytes, &d.by_age);
    }
}

/// `95s` → `1m35s`, `7300s` → `2h01m`, days as `3d04h`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_like_mailq() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(95), "1m35s");
        assert_eq!(age(7300), "2h01m");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d04h");
    }
}
