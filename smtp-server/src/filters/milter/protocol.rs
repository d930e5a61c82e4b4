//! The milter wire protocol (version 6, as libmilter and Postfix speak it), without I/O:
//! commands encoded into bytes, responses decoded from bytes.
//!
//! Every packet is a 32-bit big-endian length (counting the command byte), a command
//! byte, then the data. Strings are NUL-terminated.
//!
//! ```text
//!  MTA ── 'O' optneg ──────────▶ milter      MTA ◀── 'O' version, actions, steps, macros
//!      ── 'D' macros, 'C' connect, 'H' helo, 'M' mail, 'R' rcpt, 'T' data,
//!         'L' header…, 'N' end of headers, 'B' body…, 'E' end of body ──▶
//!      ◀── 'c' continue | 'a' accept | 'r' reject | 't' tempfail | 'y' reply | 'd' discard
//!          (and at end of body first: '+', '-', '2', 'b', 'e', 'h', 'i', 'm', 'q', 'p')
//! ```
//!
//! ```
//! use smtp_server::filters::milter::protocol::{Command, Decoder, Response};
//!
//! let mut out = Vec::new();
//! Command::Helo("client.test").encode(&mut out).unwrap();
//! assert_eq!(out, b"\0\0\0\x0dHclient.test\0");
//!
//! let mut decoder = Decoder::new(64 * 1024);
//! decoder.push(b"\0\0\0\x01c");
//! assert_eq!(decoder.next_response().unwrap(), Some(Response::Continue));
//! assert_eq!(decoder.next_response().unwrap(), None);
//! ```

use std::net::SocketAddr;

use smtp_proto::{EnhancedStatus, Reply, ReplyCode};

/// The protocol version we speak.
pub const VERSION: u32 = 6;

/// The largest body chunk (and, by default, packet) libmilter accepts.
pub const MAX_CHUNK: usize = 65535;

/// Errors of the codec: a packet that cannot be encoded, or bytes that are not a
/// well-formed response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A packet longer than the limit.
    #[error("milter packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The length announced or needed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A packet of length zero (no command byte).
    #[error("empty milter packet")]
    Empty,
    /// A response whose data is shorter than its command requires.
    #[error("truncated milter response {0:?}")]
    Truncated(char),
    /// A response code we do not know.
    #[error("unknown milter response {0:?}")]
    Unknown(char),
    /// A reply code that is not a `4yz` or `5yz` reply.
    #[error("bad milter reply code")]
    BadReply,
}

/// Modifications the MTA allows (`SMFIF_*`), offered in negotiation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(pub u32);

impl Actions {
    /// Add header fields.
    pub const ADD_HEADERS: Self = Self(0x01);
    /// Replace the body.
    pub const CHANGE_BODY: Self = Self(0x02);
    /// Add recipients.
    pub const ADD_RECIPIENT: Self = Self(0x04);
    /// Delete recipients.
    pub const DELETE_RECIPIENT: Self = Self(0x08);
    /// Change or delete header fields.
    pub const CHANGE_HEADERS: Self = Self(0x10);
    /// Quarantine the message.
    pub const QUARANTINE: Self = Self(0x20);
    /// Change the envelope sender.
    pub const CHANGE_FROM: Self = Self(0x40);
    /// Add recipients with ESMTP arguments.
    pub const ADD_RECIPIENT_ARGS: Self = Self(0x80);
    /// Ask for a list of macros per stage.
    pub const SET_MACROS: Self = Self(0x100);
    /// Everything above: what we offer.
    pub const ALL: Self = Self(0x1ff);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Protocol steps (`SMFIP_*`): what the milter does not want sent, and which commands it
/// does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Steps(pub u32);

impl Steps {
    /// No CONNECT.
    pub const NO_CONNECT: Self = Self(0x1);
    /// No HELO.
    pub const NO_HELO: Self = Self(0x2);
    /// No MAIL.
    pub const NO_MAIL: Self = Self(0x4);
    /// No RCPT.
    pub const NO_RCPT: Self = Self(0x8);
    /// No body chunks.
    pub const NO_BODY: Self = Self(0x10);
    /// No header fields.
    pub const NO_HEADERS: Self = Self(0x20);
    /// No end of headers.
    pub const NO_EOH: Self = Self(0x40);
    /// No reply to header fields.
    pub const NO_REPLY_HEADER: Self = Self(0x80);
    /// No unknown commands.
    pub const NO_UNKNOWN: Self = Self(0x100);
    /// No DATA.
    pub const NO_DATA: Self = Self(0x200);
    /// The MTA understands SKIP (to a body chunk).
    pub const SKIP: Self = Self(0x400);
    /// The milter wants rejected recipients too (not offered).
    pub const REJECTED_RCPT: Self = Self(0x800);
    /// No reply to CONNECT.
    pub const NO_REPLY_CONNECT: Self = Self(0x1000);
    /// No reply to HELO.
    pub const NO_REPLY_HELO: Self = Self(0x2000);
    /// No reply to MAIL.
    pub const NO_REPLY_MAIL: Self = Self(0x4000);
    /// No reply to RCPT.
    pub const NO_REPLY_RCPT: Self = Self(0x8000);
    /// No reply to DATA.
    pub const NO_REPLY_DATA: Self = Self(0x10000);
    /// No reply to unknown commands.
    pub const NO_REPLY_UNKNOWN: Self = Self(0x20000);
    /// No reply to end of headers.
    pub const NO_REPLY_EOH: Self = Self(0x40000);
    /// No reply to body chunks.
    pub const NO_REPLY_BODY: Self = Self(0x80000);
    /// Header values are sent with their leading space, and taken so.
    pub const HEADER_LEADING_SPACE: Self = Self(0x100000);
    /// What we offer: every step but rejected recipients (we do not see them) and the
    /// larger packet sizes.
    pub const OFFERED: Self = Self(0x1f_ffff & !0x800);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Where macros are sent, and the index of a macro list in negotiation
/// (`SMFIM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacroStage {
    /// Before CONNECT (`C`).
    Connect = 0,
    /// Before HELO (`H`).
    Helo = 1,
    /// Before MAIL (`M`).
    Mail = 2,
    /// Before RCPT (`R`).
    Rcpt = 3,
    /// Before DATA (`T`).
    Data = 4,
    /// Before end of body (`E`).
    EndOfBody = 5,
    /// Before end of headers (`N`).
    EndOfHeaders = 6,
}

impl MacroStage {
    /// The command letter the macros precede.
    pub fn command(self) -> u8 {
        match self {
            Self::Connect => b'C',
            Self::Helo => b'H',
            Self::Mail => b'M',
            Self::Rcpt => b'R',
            Self::Data => b'T',
            Self::EndOfBody => b'E',
            Self::EndOfHeaders => b'N',
        }
    }
}

/// A command from the MTA to the milter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `O`: option negotiation.
    Negotiate {
        /// Protocol version.
        version: u32,
        /// Actions offered.
        actions: Actions,
        /// Steps offered.
        steps: Steps,
    },
    /// `D`: macros for the next command.
    Macros {
        /// The stage.
        stage: MacroStage,
        /// Names (`j`, `{daemon_name}`) and values.
        macros: &'a [(String, String)],
    },
    /// `C`: the client's name and address (`None`: unknown family).
    Connect {
        /// The client's host name (or `[address]`).
        hostname: &'a str,
        /// The client's address and port.
        address: Option<SocketAddr>,
    },
    /// `H`: the HELO/EHLO argument.
    Helo(&'a str),
    /// `M`: the sender (`<a@b>`) then its ESMTP arguments.
    Mail(&'a [String]),
    /// `R`: the recipient (`<a@b>`) then its ESMTP arguments.
    Rcpt(&'a [String]),
    /// `T`: DATA.
    Data,
    /// `L`: one header field.
    Header {
        /// The field name.
        name: &'a [u8],
        /// The value (folded lines joined by LF).
        value: &'a [u8],
    },
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a body chunk (at most [`MAX_CHUNK`] bytes).
    Body(&'a [u8]),
    /// `E`: end of body.
    EndOfBody,
    /// `A`: abort the transaction.
    Abort,
    /// `Q`: quit.
    Quit,
}

impl Command<'_> {
    /// Appends the packet to `out`. A NUL inside a string becomes a space (the
    /// protocol cannot carry it). Fails when the packet would exceed [`MAX_CHUNK`] bytes
    /// of data (what libmilter accepts).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match *self {
            Self::Negotiate {
                version,
                actions,
                steps,
            } => {
                out.push(b'O');
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&actions.0.to_be_bytes());
                out.extend_from_slice(&steps.0.to_be_bytes());
            }
            Self::Macros { stage, macros } => {
                out.push(b'D');
                out.push(stage.command());
                for (name, value) in macros {
                    push_str(out, name.as_bytes());
                    push_str(out, value.as_bytes());
                }
            }
            Self::Connect { hostname, address } => {
                out.push(b'C');
                push_str(out, hostname.as_bytes());
                match address {
                    None => out.push(b'U'),
                    Some(addr) => {
                        let ip = match addr.ip() {
                            std::net::IpAddr::V6(v6) => v6
                                .to_ipv4_mapped()
                                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                            v4 => v4,
                        };
                        out.push(if ip.is_ipv4() { b'4' } else { b'6' });
                        out.extend_from_slice(&addr.port().to_be_bytes());
                        push_str(out, ip.to_string().as_bytes());
                    }
                }
            }
            Self::Helo(name) => {
                out.push(b'H');
                push_str(out, name.as_bytes());
            }
            Self::Mail(args) | Self::Rcpt(args) => {
                out.push(if matches!(self, Self::Mail(_)) {
                    b'M'
                } else {
                    b'R'
                });
                for arg in args {
                    push_str(out, arg.as_bytes());
                }
            }
            Self::Data => out.push(b'T'),
            Self::Header { name, value } => {
                out.push(b'L');
                push_str(out, name);
                push_str(out, value);
            }
            Self::EndOfHeaders => out.push(b'N'),
            Self::Body(chunk) => {
                out.push(b'B');
                out.extend_from_slice(chunk);
            }
            Self::EndOfBody => out.push(b'E'),
            Self::Abort => out.push(b'A'),
            Self::Quit => out.push(b'Q'),
        }
        let len = out.len() - start - 4;
        if len - 1 > MAX_CHUNK {
            out.truncate(start);
            return Err(ProtocolError::TooLarge {
                len,
                max: MAX_CHUNK + 1,
            });
        }
        // At most MAX_CHUNK + 1: fits in 32 bits.
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Appends a NUL-terminated string, NULs inside replaced by spaces.
fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().map(|&b| if b == 0 { b' ' } else { b }));
    out.push(0);
}

/// A response from the milter to the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `O`: the milter's side of the negotiation.
    Negotiate {
        /// Its protocol version (2 to 6).
        version: u32,
        /// The actions it may take.
        actions: Actions,
        /// The steps it asks for.
        steps: Steps,
        /// Macro lists it wants, per stage: the names, as listed (`{auth_authen} i`).
        macros: Vec<(u32, String)>,
    },
    /// `c`: go on.
    Continue,
    /// `a`: accept (the connection, or the message), ask no more.
    Accept,
    /// `r`: reject.
    Reject,
    /// `t`: fail temporarily.
    Tempfail,
    /// `d`: accept the message and drop it.
    Discard,
    /// `s`: skip the rest of the body.
    Skip,
    /// `y`: reject with this reply (`4yz` or `5yz`).
    Reply(Reply),
    /// `4`: the milter shuts down: close the SMTP connection (`421`).
    Shutdown,
    /// `f`: the connection fails: close it (`421`).
    ConnectionFailed,
    /// `p`: still working; the timeout starts again.
    Progress,
    /// `+`: add a recipient.
    AddRecipient(String),
    /// `2`: add a recipient with ESMTP arguments.
    AddRecipientArgs {
        /// The recipient.
        recipient: String,
        /// Its arguments (`NOTIFY=NEVER`).
        args: String,
    },
    /// `-`: delete a recipient.
    DeleteRecipient(String),
    /// `e`: change the envelope sender.
    ChangeFrom {
        /// The new sender.
        sender: String,
        /// Its ESMTP arguments, if any.
        args: Option<String>,
    },
    /// `b`: a chunk of the new body (chunks follow one another).
    ReplaceBody(Vec<u8>),
    /// `h`: add a header field at the end.
    AddHeader {
        /// The name.
        name: String,
        /// The value.
        value: Vec<u8>,
    },
    /// `i`: insert a header field at a position (0: first).
    InsertHeader {
        /// The position.
        index: u32,
        /// The name.
        name: String,
        /// The value.
        value: Vec<u8>,
    },
    /// `m`: change the `index`th (from 1) field called `name`; an empty value deletes it.
    ChangeHeader {
        /// Which occurrence of the name.
        index: u32,
        /// The name.
        name: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// `q`: quarantine the message, for this reason.
    Quarantine(String),
}

impl Response {
    /// Whether the response ends the exchange for the command it answers (and is not
    /// a modification or a progress report).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Negotiate { .. }
                | Self::Continue
                | Self::Accept
                | Self::Reject
                | Self::Tempfail
                | Self::Discard
                | Self::Skip
                | Self::Reply(_)
                | Self::Shutdown
                | Self::ConnectionFailed
        )
    }

    /// Encodes the response (what a milter sends): for tests and fake milters.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let str_ = |out: &mut Vec<u8>, s: &[u8]| push_str(out, s);
        match self {
            Self::Negotiate {
                version,
                actions,
                steps,
                macros,
            } => {
                out.push(b'O');
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&actions.0.to_be_bytes());
                out.extend_from_slice(&steps.0.to_be_bytes());
                for (stage, list) in macros {
                    out.extend_from_slice(&stage.to_be_bytes());
                    str_(out, list.as_bytes());
                }
            }
            Self::Continue => out.push(b'c'),
            Self::Accept => out.push(b'a'),
            Self::Reject => out.push(b'r'),
            Self::Tempfail => out.push(b't'),
            Self::Discard => out.push(b'd'),
            Self::Skip => out.push(b's'),
            Self::Reply(reply) => {
                out.push(b'y');
                let wire = reply.to_bytes();
                let text = wire.strip_suffix(b"\r\n").unwrap_or(&wire);
                str_(out, text);
            }
            Self::Shutdown => out.push(b'4'),
            Self::ConnectionFailed => out.push(b'f'),
            Self::Progress => out.push(b'p'),
            Self::AddRecipient(r) => {
                out.push(b'+');
                str_(out, r.as_bytes());
            }
            Self::AddRecipientArgs { recipient, args } => {
                out.push(b'2');
                str_(out, recipient.as_bytes());
                str_(out, args.as_bytes());
            }
            Self::DeleteRecipient(r) => {
                out.push(b'-');
                str_(out, r.as_bytes());
            }
            Self::ChangeFrom { sender, args } => {
                out.push(b'e');
                str_(out, sender.as_bytes());
                if let Some(args) = args {
                    str_(out, args.as_bytes());
                }
            }
            Self::ReplaceBody(chunk) => {
                out.push(b'b');
                out.extend_from_slice(chunk);
            }
            Self::AddHeader { name, value } => {
                out.push(b'h');
                str_(out, name.as_bytes());
                str_(out, value);
            }
            Self::InsertHeader { index, name, value }
            | Self::ChangeHeader { index, name, value } => {
                out.push(if matches!(self, Self::InsertHeader { .. }) {
                    b'i'
                } else {
                    b'm'
                });
                out.extend_from_slice(&index.to_be_bytes());
                str_(out, name.as_bytes());
                str_(out, value);
            }
            Self::Quarantine(reason) => {
                out.push(b'q');
                str_(out, reason.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one packet's command byte and data.
    fn decode(command: u8, data: &[u8]) -> Result<Self, ProtocolError> {
        let c = char::from(command);
        let truncated = || ProtocolError::Truncated(c);
        let mut r = Reader { data, pos: 0 };
        let response = match command {
            b'O' => {
                let version = r.u32().ok_or_else(truncated)?;
                let actions = Actions(r.u32().ok_or_else(truncated)?);
                let steps = Steps(r.u32().ok_or_else(truncated)?);
                let mut macros = Vec::new();
                while !r.is_empty() {
                    let stage = r.u32().ok_or_else(truncated)?;
                    let list = r.string().ok_or_else(truncated)?;
                    macros.push((stage, list));
                }
                Self::Negotiate {
                    version,
                    actions,
                    steps,
                    macros,
                }
            }
            b'c' => Self::Continue,
            b'a' => Self::Accept,
            b'r' => Self::Reject,
            b't' => Self::Tempfail,
            b'd' => Self::Discard,
            b's' => Self::Skip,
            b'4' => Self::Shutdown,
            b'f' => Self::ConnectionFailed,
            b'p' => Self::Progress,
            b'y' => Self::Reply(parse_reply(&r.bytes().ok_or_else(truncated)?)?),
            b'+' => Self::AddRecipient(r.string().ok_or_else(truncated)?),
            b'2' => Self::AddRecipientArgs {
                recipient: r.string().ok_or_else(truncated)?,
                args: r.string().ok_or_else(truncated)?,
            },
            b'-' => Self::DeleteRecipient(r.string().ok_or_else(truncated)?),
            b'e' => Self::ChangeFrom {
                sender: r.string().ok_or_else(truncated)?,
                args: if r.is_empty() {
                    None
                } else {
                    Some(r.string().ok_or_else(truncated)?).filter(|a| !a.is_empty())
                },
            },
            b'b' => Self::ReplaceBody(data.to_vec()),
            b'h' => Self::AddHeader {
                name: r.string().ok_or_else(truncated)?,
                value: r.bytes().ok_or_else(truncated)?,
            },
            b'i' | b'm' => {
                let index = r.u32().ok_or_else(truncated)?;
                let name = r.string().ok_or_else(truncated)?;
                let value = r.bytes().ok_or_else(truncated)?;
                if command == b'i' {
                    Self::InsertHeader { index, name, value }
                } else {
                    Self::ChangeHeader { index, name, value }
                }
            }
            b'q' => Self::Quarantine(r.string().ok_or_else(truncated)?),
            other => return Err(ProtocolError::Unknown(char::from(other))),
        };
        Ok(response)
    }
}

/// Reads fields out of a packet's data.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.data.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The bytes up to the next NUL (which must be there).
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let rest = self.data.get(self.pos..)?;
        let nul = rest.iter().position(|&b| b == 0)?;
        self.pos += nul + 1;
        Some(rest[..nul].to_vec())
    }

    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// Parses the text of `SMFIR_REPLYCODE`: `xyz[-| ][x.y.z ]text`, possibly several lines
/// separated by CRLF (`smfi_setmlreply`), each repeating the code. Only `4yz` and `5yz`
/// replies are taken (as libmilter allows).
///
/// ```
/// use smtp_server::filters::milter::protocol::parse_reply;
/// let reply = parse_reply(b"554 5.7.1 Virus found").unwrap();
/// assert_eq!(reply.to_string(), "554 5.7.1 Virus found");
/// let multi = parse_reply(b"451-4.7.1 one\r\n451 4.7.1 two").unwrap();
/// assert_eq!(multi.text(), "one\ntwo");
/// assert!(parse_reply(b"250 ok").is_err());
/// ```
pub fn parse_reply(text: &[u8]) -> Result<Reply, ProtocolError> {
    let text = String::from_utf8_lossy(text);
    let mut code = None;
    let mut status = None;
    let mut lines = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() && i > 0 {
            continue;
        }
        let digits = line.get(..3).ok_or(ProtocolError::BadReply)?;
        let n: u16 = digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
            .ok_or(ProtocolError::BadReply)?;
        let this = ReplyCode::new(n).filter(|c| c.is_transient() || c.is_permanent());
        let this = this.ok_or(ProtocolError::BadReply)?;
        if code.is_some_and(|c| c != this) {
            return Err(ProtocolError::BadReply);
        }
        code = Some(this);
        let mut rest = &line[3..];
        rest = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('-'))
            .unwrap_or(rest);
        let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(s) = word.parse::<EnhancedStatus>() {
            if status.is_none() {
                status = Some(s);
            }
            rest = after;
        }
        lines.push(rest.to_owned());
    }
    let code = code.ok_or(ProtocolError::BadReply)?;
    let status = status.filter(|s| u16::from(s.class()) == code.as_u16() / 100);
    let text = lines.join("\n");
    Reply::from_parts(code, status, text).ok_or(ProtocolError::BadReply)
}

/// Splits the responses out of the bytes read from a milter, one packet at a time,
/// refusing packets longer than a limit (so a broken milter cannot make us buffer
/// without bound).
#[derive(Debug)]
pub struct Decoder {
    buffer: Vec<u8>,
    max_packet: usize,
}

impl Decoder {
    /// A decoder refusing packets of more than `max_packet` bytes (command byte
    /// included).
    pub fn new(max_packet: usize) -> Self {
        Self {
            buffer: Vec::new(),
            max_packet,
        }
    }

    /// Adds bytes read from the milter.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet make a whole packet.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete response, `None` when more bytes are needed. An error leaves
    /// the decoder unusable (the stream cannot be resynchronised).
    pub fn next_response(&mut self) -> Result<Option<Response>, ProtocolError> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::Empty);
        }
        if len > self.max_packet {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_packet,
            });
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let command = self.buffer[4];
        let response = Response::decode(command, &self.buffer[5..4 + len]);
        self.buffer.drain(..4 + len);
        response.map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Response>, ProtocolError> {
        let mut d = Decoder::new(MAX_CHUNK + 1);
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(r) = d.next_response()? {
            out.push(r);
        }
        assert_eq!(d.buffered(), 0, "leftover bytes");
        Ok(out)
    }

    fn packet(command: u8, data: &[u8]) -> Vec<u8> {
        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(command);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn every_response_round_trips() {
        let reply = Reply::new(
            ReplyCode::new(554).unwrap(),
            EnhancedStatus::NOT_AUTHORIZED,
            "no",
        );
        let all = vec![
            Response::Negotiate {
                version: 6,
                actions: Actions(0x1ff),
                steps: Steps(0x1000),
                macros: vec![(2, "{auth_authen} i".into()), (5, "{rcpt_addr}".into())],
            },
            Response::Continue,
            Response::Accept,
            Response::Reject,
            Response::Tempfail,
            Response::Discard,
            Response::Skip,
            Response::Reply(reply),
            Response::Shutdown,
            Response::ConnectionFailed,
            Response::Progress,
            Response::AddRecipient("<a@b.test>".into()),
            Response::AddRecipientArgs {
                recipient: "<a@b.test>".into(),
                args: "NOTIFY=NEVER".into(),
            },
            Response::DeleteRecipient("<c@d.test>".into()),
            Response::ChangeFrom {
                sender: "<s@e.test>".into(),
                args: Some("SIZE=10".into()),
            },
            Response::ChangeFrom {
                sender: "<>".into(),
                args: None,
            },
            Response::ReplaceBody(b"new\r\nbody\r\n".to_vec()),
            Response::AddHeader {
                name: "X-A".into(),
                value: b"1".to_vec(),
            },
            Response::InsertHeader {
                index: 0,
                name: "DKIM-Signature".into(),
                value: b"v=1;\n\tb=x".to_vec(),
            },
            Response::ChangeHeader {
                index: 2,
                name: "Subject".into(),
                value: Vec::new(),
            },
            Response::Quarantine("virus".into()),
        ];
        let mut wire = Vec::new();
        for r in &all {
            r.encode(&mut wire);
        }
        assert_eq!(decode_all(&wire).unwrap(), all);
        // Fed a byte at a time, the same responses come out.
        let mut d = Decoder::new(MAX_CHUNK + 1);
        let mut out = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(r) = d.next_response().unwrap() {
                out.push(r);
            }
        }
        assert_eq!(out, all);
    }

    #[test]
    fn bad_packets_are_refused_without_panic() {
        // Oversized, announced before the data arrives.
        let mut d = Decoder::new(100);
        d.push(&[0, 0, 1, 0]);
        assert!(matches!(
            d.next_response(),
            Err(ProtocolError::TooLarge { len: 256, .. })
        ));
        assert_eq!(decode_all(&[0, 0, 0, 0]), Err(ProtocolError::Empty));
        assert_eq!(
            decode_all(&packet(b'Z', b"")),
            Err(ProtocolError::Unknown('Z'))
        );
        // Truncated data: a string without its NUL, a short integer.
        for (command, data) in [
            (b'+', &b"<a@b>"[..]),
            (b'h', b"X-A\0value"),
            (b'i', b"\0\0\0"),
            (b'm', b"\0\0\0\x01Subject"),
            (b'O', b"\0\0\0\x06\0\0"),
            (b'O', b"\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x01{i}"),
            (b'2', b"<a@b>\0"),
            (b'y', b"550 no"),
            (b'q', b""),
        ] {
            assert_eq!(
                decode_all(&packet(command, data)),
                Err(ProtocolError::Truncated(char::from(command))),
                "{}",
                char::from(command)
            );
        }
        // Reply codes that are not 4yz/5yz, or not codes at all.
        for text in [
            &b"250 ok\0"[..],
            b"5\0",
            b"abc x\0",
            b"550-a\r\n451 b\0",
            b"\0",
        ] {
            assert_eq!(
                decode_all(&packet(b'y', text)),
                Err(ProtocolError::BadReply)
            );
        }
        // Incomplete packets wait for more bytes.
        let mut d = Decoder::new(100);
        d.push(&[0, 0, 0, 5, b'+', b'<']);
        assert_eq!(d.next_response(), Ok(None));
    }

    #[test]
    fn replies_keep_their_status_and_lines() {
        let r = parse_reply(b"550 5.7.1 Command rejected").unwrap();
        assert_eq!(r.code().as_u16(), 550);
        assert_eq!(r.status(), Some(EnhancedStatus::NOT_AUTHORIZED));
        assert_eq!(r.text(), "Command rejected");
        let r = parse_reply(b"451 Try later").unwrap();
        assert_eq!(r.status(), None);
        assert_eq!(r.text(), "Try later");
        // A status of the wrong class is dropped, not trusted.
        let r = parse_reply(b"550 4.7.1 mixed").unwrap();
        assert_eq!(r.status(), None);
    }

    #[test]
    fn commands_encode_as_libmilter_reads_them() {
        let mut out = Vec::new();
        Command::Negotiate {
            version: VERSION,
            actions: Actions::ALL,
            steps: Steps::OFFERED,
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(out.len(), 4 + 13);
        assert_eq!(&out[..5], b"\0\0\0\x0dO");
        out.clear();
        Command::Connect {
            hostname: "[192.0.2.1]",
            address: Some("192.0.2.1:2525".parse().unwrap()),
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(&out[4..], b"C[192.0.2.1]\x004\x09\xdd192.0.2.1\0");
        out.clear();
        Command::Connect {
            hostname: "[::ffff:192.0.2.1]",
            address: Some("[::ffff:192.0.2.1]:25".parse().unwrap()),
        }
        .encode(&mut out)
        .unwrap();
        assert!(
            out.ends_with(b"4\0\x19192.0.2.1\0"),
            "mapped addresses are IPv4"
        );
        out.clear();
        let macros = vec![("j".to_owned(), "mx.test".to_owned())];
        Command::Macros {
            stage: MacroStage::Connect,
            macros: &macros,
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(&out[4..], b"DCj\0mx.test\0");
        out.clear();
        let args = vec!["<a@b.test>".to_owned(), "SIZE=10".to_owned()];
        Command::Mail(&args).encode(&mut out).unwrap();
        assert_eq!(&out[4..], b"M<a@b.test>\0SIZE=10\0");
        out.clear();
        Command::Header {
            name: b"Subject",
            value: b"a\0b",
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(&out[4..], b"LSubject\0a b\0", "a NUL cannot be carried");
        out.clear();
        let big = vec![b'x'; MAX_CHUNK];
        Command::Body(&big).encode(&mut out).unwrap();
        assert_eq!(out.len(), 4 + 1 + MAX_CHUNK);
        out.clear();
        let too_big = vec![b'x'; MAX_CHUNK + 1];
        assert!(Command::Body(&too_big).encode(&mut out).is_err());
        assert!(out.is_empty(), "nothing half-written");
    }
}
