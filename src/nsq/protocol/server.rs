//! The server's side of protocol V2: decoding a client's commands exactly as nsqd v1.3.0
//! does (`nsqd/protocol_v2.go`), error texts included. Pure; the test broker in
//! `tests/support/` drives it, the client never needs it.
//!
//! nsqd checks a command in a fixed order (the client's state, then the parameters, then the
//! body size, then the body), answers the first failure and closes the connection. The order
//! decides which error text a client sees, so [`decode_command`] takes the connection's
//! [`Session`] and replays that order; only the checks that need the broker's data (a FIN of
//! an id not in flight, the IDENTIFY JSON against the server's options) are left to the caller.

use bytes::{Bytes, BytesMut};

use super::{valid_name, ErrorCode, MessageId, ServerError};

/// nsqd reads command lines through a 16 KiB `bufio.Reader`; a longer line fails and nsqd
/// drops the connection without an answer.
pub const NSQD_MAX_LINE_BYTES: usize = 16 * 1024;

/// The server options that bound what a command may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    /// Longest command line, `\n` included.
    pub max_line_bytes: usize,
    /// `--max-msg-size`: bytes of one message.
    pub max_msg_size: i64,
    /// `--max-body-size`: bytes of an IDENTIFY, AUTH or MPUB body.
    pub max_body_size: i64,
    /// `--max-rdy-count`.
    pub max_rdy_count: i64,
    /// `--max-req-timeout` in ms: bound of REQ (clamped) and DPUB (refused) delays.
    pub max_req_timeout_ms: i64,
}

impl Default for CommandLimits {
    /// nsqd's defaults.
    fn default() -> Self {
        CommandLimits {
            max_line_bytes: NSQD_MAX_LINE_BYTES,
            max_msg_size: 1024 * 1024,
            max_body_size: 5 * 1024 * 1024,
            max_rdy_count: 2500,
            max_req_timeout_ms: 60 * 60 * 1000,
        }
    }
}

/// Where a connection is in nsqd's state machine. IDENTIFY does not change it; SUB moves to
/// `Subscribed`, CLS to `Closing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Before SUB.
    Init,
    /// After SUB.
    Subscribed,
    /// After CLS.
    Closing,
}

/// What [`decode_command`] needs to know about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The connection's state.
    pub state: ClientState,
    /// False after IDENTIFY with `heartbeat_interval: -1`, which forbids SUB.
    pub heartbeats_enabled: bool,
}

/// A client command, checked as far as nsqd checks it before touching topics and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// IDENTIFY with its JSON body (not yet parsed: its checks need the server's options).
    Identify {
        /// The JSON.
        body: Bytes,
    },
    /// AUTH with its secret.
    Auth {
        /// The secret.
        secret: Bytes,
    },
    /// SUB with valid names.
    Sub {
        /// Topic.
        topic: String,
        /// Channel.
        channel: String,
    },
    /// PUB of one non-empty message within `max_msg_size`.
    Pub {
        /// Topic.
        topic: String,
        /// The message.
        body: Bytes,
    },
    /// MPUB of one or more non-empty messages.
    Mpub {
        /// Topic.
        topic: String,
        /// The messages in order.
        bodies: Vec<Bytes>,
    },
    /// DPUB with a delay within `0..=max_req_timeout_ms`.
    Dpub {
        /// Topic.
        topic: String,
        /// Delay before the message becomes deliverable.
        delay_ms: u64,
        /// The message.
        body: Bytes,
    },
    /// RDY within `0..=max_rdy_count`. A RDY after CLS is ignored by nsqd and decodes as
    /// [`Command::Nop`].
    Rdy {
        /// The new window.
        count: i64,
    },
    /// FIN.
    Fin {
        /// The message.
        id: MessageId,
    },
    /// REQ, delay already clamped to `0..=max_req_timeout_ms` as nsqd does.
    Req {
        /// The message.
        id: MessageId,
        /// Delay before redelivery.
        delay_ms: u64,
    },
    /// TOUCH.
    Touch {
        /// The message.
        id: MessageId,
    },
    /// CLS.
    Cls,
    /// NOP (and an ignored RDY): no answer.
    Nop,
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// nsqd sends this error frame and closes the connection.
    #[error("{0}")]
    Fatal(ServerError),
    /// No `\n` within the line limit: nsqd closes the connection without an answer.
    #[error("command line longer than {max_line_bytes} bytes")]
    LineTooLong {
        /// The limit.
        max_line_bytes: usize,
    },
}

fn fatal(code: ErrorCode, description: impl AsRef<[u8]>) -> CommandError {
    CommandError::Fatal(ServerError::from_parts(code, description.as_ref()))
}

/// Decodes one command from the front of `buf`, consuming it on success. `Ok(None)`: more
/// bytes are needed (nothing consumed). An error is the answer nsqd would give before closing
/// the connection; it is reported as soon as the buffered bytes decide it, as nsqd reads a
/// body only after checking the line and the size.
pub fn decode_command(
    buf: &mut BytesMut,
    limits: &CommandLimits,
    session: Session,
) -> Result<Option<Command>, CommandError> {
    let window = &buf[..buf.len().min(limits.max_line_bytes)];
    let Some(newline) = memchr::memchr(b'\n', window) else {
        if buf.len() >= limits.max_line_bytes {
            return Err(CommandError::LineTooLong { max_line_bytes: limits.max_line_bytes });
        }
        return Ok(None);
    };
    let mut line = &buf[..newline];
    if let Some(trimmed) = line.strip_suffix(b"\r") {
        line = trimmed;
    }
    // nsqd splits on every single space, so empty parameters exist ("SUB  t c").
    let params: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let body = Cursor { buf: &buf[..], pos: newline + 1 };
    let decoded = match params[0] {
        b"IDENTIFY" => identify(body, limits, session)?,
        b"FIN" => Some((Parsed::Fin(message_op(&params, session, "FIN")?), body.pos)),
        b"RDY" => Some((rdy(&params, limits, session)?, body.pos)),
        b"REQ" => Some((req(&params, limits, session)?, body.pos)),
        b"PUB" => publish(&params, body, limits)?,
        b"MPUB" => mpub(&params, body, limits)?,
        b"DPUB" => dpub(&params, body, limits)?,
        b"NOP" => Some((Parsed::Nop, body.pos)),
        b"TOUCH" => Some((Parsed::Touch(message_op(&params, session, "TOUCH")?), body.pos)),
        b"SUB" => Some((sub(&params, session)?, body.pos)),
        b"CLS" => {
            if session.state != ClientState::Subscribed {
                return Err(fatal(ErrorCode::Invalid, "cannot CLS in current state"));
            }
            Some((Parsed::Cls, body.pos))
        }
        b"AUTH" => auth(&params, body, limits, session)?,
        verb => {
            let mut d = b"invalid command ".to_vec();
            d.extend_from_slice(verb);
            return Err(fatal(ErrorCode::Invalid, d));
        }
    };
    let Some((parsed, consumed)) = decoded else {
        return Ok(None);
    };
    let frozen = buf.split_to(consumed).freeze();
    Ok(Some(parsed.build(&frozen)))
}

/// A decoded command whose byte parts are still ranges of the buffer, so the buffer can be
/// split once and every part sliced from it without copying.
enum Parsed {
    Identify(Range),
    Auth(Range),
    Sub(String, String),
    Pub(String, Range),
    Mpub(String, Vec<Range>),
    Dpub(String, u64, Range),
    Rdy(i64),
    Fin(MessageId),
    Req(MessageId, u64),
    Touch(MessageId),
    Cls,
    Nop,
}

type Range = std::ops::Range<usize>;

impl Parsed {
    fn build(self, frozen: &Bytes) -> Command {
        match self {
            Parsed::Identify(r) => Command::Identify { body: frozen.slice(r) },
            Parsed::Auth(r) => Command::Auth { secret: frozen.slice(r) },
            Parsed::Sub(topic, channel) => Command::Sub { topic, channel },
            Parsed::Pub(topic, r) => Command::Pub { topic, body: frozen.slice(r) },
            Parsed::Mpub(topic, ranges) => {
                Command::Mpub { topic, bodies: ranges.into_iter().map(|r| frozen.slice(r)).collect() }
            }
            Parsed::Dpub(topic, delay_ms, r) => Command::Dpub { topic, delay_ms, body: frozen.slice(r) },
            Parsed::Rdy(count) => Command::Rdy { count },
            Parsed::Fin(id) => Command::Fin { id },
            Parsed::Req(id, delay_ms) => Command::Req { id, delay_ms },
            Parsed::Touch(id) => Command::Touch { id },
            Parsed::Cls => Command::Cls,
            Parsed::Nop => Command::Nop,
        }
    }
}

type Step = Result<Option<(Parsed, usize)>, CommandError>;

/// Reads lengths and bodies after the command line without consuming anything.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// nsqd's `readLen`: a big-endian `int32` (so `0xffffffff` is -1).
    fn read_len(&mut self) -> Option<i32> {
        let bytes = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The range of the next `len` bytes, if buffered. `len` was checked positive.
    fn take(&mut self, len: i32) -> Option<Range> {
        let len = usize::try_from(len).ok()?;
        let end = self.pos.checked_add(len)?;
        if end > self.buf.len() {
            return None;
        }
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }
}

fn identify(mut body: Cursor<'_>, limits: &CommandLimits, session: Session) -> Step {
    if session.state != ClientState::Init {
        return Err(fatal(ErrorCode::Invalid, "cannot IDENTIFY in current state"));
    }
    let Some(len) = body.read_len() else { return Ok(None) };
    if i64::from(len) > limits.max_body_size {
        return Err(fatal(
            ErrorCode::BadBody,
            format!("IDENTIFY body too big {len} > {}", limits.max_body_size),
        ));
    }
    if len <= 0 {
        return Err(fatal(ErrorCode::BadBody, format!("IDENTIFY invalid body size {len}")));
    }
    Ok(body.take(len).map(|r| (Parsed::Identify(r), body.pos)))
}

fn auth(params: &[&[u8]], mut body: Cursor<'_>, limits: &CommandLimits, session: Session) -> Step {
    if session.state != ClientState::Init {
        return Err(fatal(ErrorCode::Invalid, "cannot AUTH in current state"));
    }
    if params.len() != 1 {
        return Err(fatal(ErrorCode::Invalid, "AUTH invalid number of parameters"));
    }
    let Some(len) = body.read_len() else { return Ok(None) };
    if i64::from(len) > limits.max_body_size {
        return Err(fatal(ErrorCode::BadBody, format!("AUTH body too big {len} > {}", limits.max_body_size)));
    }
    if len <= 0 {
        return Err(fatal(ErrorCode::BadBody, format!("AUTH invalid body size {len}")));
    }
    Ok(body.take(len).map(|r| (Parsed::Auth(r), body.pos)))
}

fn sub(params: &[&[u8]], session: Session) -> Result<Parsed, CommandError> {
    if session.state != ClientState::Init {
        return Err(fatal(ErrorCode::Invalid, "cannot SUB in current state"));
    }
    if !session.heartbeats_enabled {
        return Err(fatal(ErrorCode::Invalid, "cannot SUB with heartbeats disabled"));
    }
    if params.len() < 3 {
        return Err(fatal(ErrorCode::Invalid, "SUB insufficient number of parameters"));
    }
    let topic = checked_name(params[1], ErrorCode::BadTopic, "SUB topic name ")?;
    let channel = checked_name(params[2], ErrorCode::BadChannel, "SUB channel name ")?;
    Ok(Parsed::Sub(topic, channel))
}

fn rdy(params: &[&[u8]], limits: &CommandLimits, session: Session) -> Result<Parsed, CommandError> {
    match session.state {
        // nsqd ignores RDY after CLS, whatever its parameters.
        ClientState::Closing => return Ok(Parsed::Nop),
        ClientState::Init => return Err(fatal(ErrorCode::Invalid, "cannot RDY in current state")),
        ClientState::Subscribed => {}
    }
    let mut count: i64 = 1;
    if let Some(raw) = params.get(1) {
        let Some(n) = byte_to_base10(raw) else {
            return Err(fatal(ErrorCode::Invalid, [b"RDY could not parse count ", *raw].concat()));
        };
        // Go's int64(uint64) conversion.
        count = n as i64;
    }
    if count < 0 || count > limits.max_rdy_count {
        return Err(fatal(
            ErrorCode::Invalid,
            format!("RDY count {count} out of range 0-{}", limits.max_rdy_count),
        ));
    }
    Ok(Parsed::Rdy(count))
}

/// The shared front of FIN, REQ and TOUCH: state, parameter count, id.
fn message_op(params: &[&[u8]], session: Session, verb: &str) -> Result<MessageId, CommandError> {
    if session.state == ClientState::Init {
        return Err(fatal(ErrorCode::Invalid, format!("cannot {verb} in current state")));
    }
    let needed = if verb == "REQ" { 3 } else { 2 };
    if params.len() < needed {
        return Err(fatal(ErrorCode::Invalid, format!("{verb} insufficient number of params")));
    }
    match MessageId::from_slice(params[1]) {
        Some(id) => Ok(id),
        None => Err(fatal(ErrorCode::Invalid, "invalid message ID")),
    }
}

fn req(params: &[&[u8]], limits: &CommandLimits, session: Session) -> Result<Parsed, CommandError> {
    let id = message_op(params, session, "REQ")?;
    let Some(ms) = byte_to_base10(params[2]) else {
        return Err(fatal(ErrorCode::Invalid, [b"REQ could not parse timeout ", params[2]].concat()));
    };
    // nsqd clamps out-of-range REQ delays instead of refusing them; the arithmetic is Go's
    // wrapping `time.Duration(ms) * time.Millisecond`.
    let ns = (ms as i64).wrapping_mul(1_000_000);
    let max_ns = limits.max_req_timeout_ms.saturating_mul(1_000_000);
    let clamped = ns.clamp(0, max_ns.max(0));
    Ok(Parsed::Req(id, u64::try_from(clamped / 1_000_000).unwrap_or(0)))
}

fn publish(params: &[&[u8]], mut body: Cursor<'_>, limits: &CommandLimits) -> Step {
    if params.len() < 2 {
        return Err(fatal(ErrorCode::Invalid, "PUB insufficient number of parameters"));
    }
    let topic = checked_name(params[1], ErrorCode::BadTopic, "PUB topic name ")?;
    let Some(len) = body.read_len() else { return Ok(None) };
    check_message_len(len, limits, "PUB")?;
    Ok(body.take(len).map(|r| (Parsed::Pub(topic, r), body.pos)))
}

fn dpub(params: &[&[u8]], mut body: Cursor<'_>, limits: &CommandLimits) -> Step {
    if params.len() < 3 {
        return Err(fatal(ErrorCode::Invalid, "DPUB insufficient number of parameters"));
    }
    let topic = checked_name(params[1], ErrorCode::BadTopic, "DPUB topic name ")?;
    let Some(ms) = byte_to_base10(params[2]) else {
        return Err(fatal(ErrorCode::Invalid, [b"DPUB could not parse timeout ", params[2]].concat()));
    };
    let ns = (ms as i64).wrapping_mul(1_000_000);
    if ns < 0 || ns > limits.max_req_timeout_ms.saturating_mul(1_000_000) {
        return Err(fatal(
            ErrorCode::Invalid,
            format!("DPUB timeout {ms} out of range 0-{}", limits.max_req_timeout_ms),
        ));
    }
    let Some(len) = body.read_len() else { return Ok(None) };
    check_message_len(len, limits, "DPUB")?;
    Ok(body.take(len).map(|r| (Parsed::Dpub(topic, ms, r), body.pos)))
}

fn check_message_len(len: i32, limits: &CommandLimits, verb: &str) -> Result<(), CommandError> {
    if len <= 0 {
        return Err(fatal(ErrorCode::BadMessage, format!("{verb} invalid message body size {len}")));
    }
    if i64::from(len) > limits.max_msg_size {
        return Err(fatal(
            ErrorCode::BadMessage,
            format!("{verb} message too big {len} > {}", limits.max_msg_size),
        ));
    }
    Ok(())
}

fn mpub(params: &[&[u8]], mut body: Cursor<'_>, limits: &CommandLimits) -> Step {
    if params.len() < 2 {
        return Err(fatal(ErrorCode::Invalid, "MPUB insufficient number of parameters"));
    }
    // nsqd v1.3.0 puts the code into the description too, so the text reads
    // `E_BAD_TOPIC E_BAD_TOPIC MPUB topic name …`.
    let topic = checked_name(params[1], ErrorCode::BadTopic, "E_BAD_TOPIC MPUB topic name ")?;
    let Some(len) = body.read_len() else { return Ok(None) };
    if len <= 0 {
        return Err(fatal(ErrorCode::BadBody, format!("MPUB invalid body size {len}")));
    }
    if i64::from(len) > limits.max_body_size {
        return Err(fatal(ErrorCode::BadBody, format!("MPUB body too big {len} > {}", limits.max_body_size)));
    }
    let Some(count) = body.read_len() else { return Ok(None) };
    // 4 bytes of count, then at least 4 + 1 bytes per message.
    let max_messages = limits.max_body_size.saturating_sub(4) / 5;
    if count <= 0 || i64::from(count) > max_messages {
        return Err(fatal(ErrorCode::BadBody, format!("MPUB invalid message count {count}")));
    }
    // Like nsqd, the messages are read from the stream one by one; the declared body size is
    // only checked against the limit, never against what follows.
    let mut ranges = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1024));
    for i in 0..count {
        let Some(size) = body.read_len() else { return Ok(None) };
        if size <= 0 {
            return Err(fatal(ErrorCode::BadMessage, format!("MPUB invalid message({i}) body size {size}")));
        }
        if i64::from(size) > limits.max_msg_size {
            return Err(fatal(
                ErrorCode::BadMessage,
                format!("MPUB message too big {size} > {}", limits.max_msg_size),
            ));
        }
        let Some(range) = body.take(size) else { return Ok(None) };
        ranges.push(range);
    }
    Ok(Some((Parsed::Mpub(topic, ranges), body.pos)))
}

fn checked_name(raw: &[u8], code: ErrorCode, what: &str) -> Result<String, CommandError> {
    if valid_name(raw) {
        // Valid names are ASCII, so this never fails; the error path keeps it total.
        if let Ok(name) = std::str::from_utf8(raw) {
            return Ok(name.to_owned());
        }
    }
    let mut d = what.as_bytes().to_vec();
    go_quote(raw, &mut d);
    d.extend_from_slice(b" is not valid");
    Err(fatal(code, d))
}

/// nsqd's `protocol.ByteToBase10`: decimal digits only (no sign), wrapping on overflow, and
/// an empty string is 0.
fn byte_to_base10(raw: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in raw {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
    }
    Some(n)
}

/// Go's `%q` of a string, close enough for names in error texts: `"` and `\` escaped, C-style
/// escapes for control characters, `\xNN` for invalid UTF-8, printable Unicode as is. (Go's
/// exact rule for printable non-ASCII is Unicode's graphic categories; Rust's
/// `is_control`/`is_whitespace` differ only for unassigned and format code points.)
pub(crate) fn go_quote(raw: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\x07' => out.extend_from_slice(b"\\a"),
                '\x08' => out.extend_from_slice(b"\\b"),
                '\x0c' => out.extend_from_slice(b"\\f"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\x0b' => out.extend_from_slice(b"\\v"),
                ' ' => out.push(b' '),
                c if c.is_ascii_graphic() => out.push(c as u8),
                c if (c as u32) < 0x80 => out.extend_from_slice(format!("\\x{:02x}", c as u32).as_bytes()),
                c if c.is_control() || c.is_whitespace() => {
                    let escaped = if (c as u32) < 0x10000 {
                        format!("\\u{:04x}", c as u32)
                    } else {
                        format!("\\U{:08x}", c as u32)
                    };
                    out.extend_from_slice(escaped.as_bytes());
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        for b in chunk.invalid() {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: Session = Session { state: ClientState::Init, heartbeats_enabled: true };
    const SUBSCRIBED: Session = Session { state: ClientState::Subscribed, heartbeats_enabled: true };
    const CLOSING: Session = Session { state: ClientState::Closing, heartbeats_enabled: true };

    fn limits() -> CommandLimits {
        // The options of ../shared/nsq-conformance/ recordings.
        CommandLimits { max_msg_size: 1024, max_body_size: 4096, ..CommandLimits::default() }
    }

    fn error_text(bytes: &[u8], session: Session) -> String {
        let mut buf = BytesMut::from(bytes);
        match decode_command(&mut buf, &limits(), session) {
            Err(CommandError::Fatal(e)) => {
                assert!(e.is_fatal());
                e.to_string()
            }
            other => panic!("expected a fatal error for {:?}, got {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn recorded_error_texts() {
        // Each text from a file of ../shared/nsq-conformance/.
        assert_eq!(error_text(b"WHAT\n", INIT), "E_INVALID invalid command WHAT");
        assert_eq!(
            error_text(b"DPUB conf_dpub -1\n\x00\x00\x00\x01x", INIT),
            "E_INVALID DPUB could not parse timeout -1"
        );
        assert_eq!(
            error_text(b"PUB bad!topic\n\x00\x00\x00\x01x", INIT),
            "E_BAD_TOPIC PUB topic name \"bad!topic\" is not valid"
        );
        assert_eq!(
            error_text(b"PUB conf_topic\n\x00\x00\x00\x00", INIT),
            "E_BAD_MESSAGE PUB invalid message body size 0"
        );
        assert_eq!(
            error_text(b"PUB conf_topic\n\x00\x00\x04\x01", INIT),
            "E_BAD_MESSAGE PUB message too big 1025 > 1024"
        );
        assert_eq!(
            error_text(b"MPUB conf_mpub\n\x00\x00\x13\xa0\x00\x00\x00\x05", INIT),
            "E_BAD_BODY MPUB body too big 5024 > 4096"
        );
        assert_eq!(
            error_text(
                b"MPUB conf_mpub\n\x00\x00\x00\x0f\x00\x00\x00\x02\x00\x00\x00\x03one\x00\x00\x00\x00",
                INIT
            ),
            "E_BAD_MESSAGE MPUB invalid message(1) body size 0"
        );
        assert_eq!(
            error_text(b"SUB conf_topic bad!ch\n", INIT),
            "E_BAD_CHANNEL SUB channel name \"bad!ch\" is not valid"
        );
        assert_eq!(error_text(b"SUB conf_twice ch\n", SUBSCRIBED), "E_INVALID cannot SUB in current state");
        assert_eq!(error_text(b"RDY 2501\n", SUBSCRIBED), "E_INVALID RDY count 2501 out of range 0-2500");
    }

    #[test]
    fn nsqd_source_error_texts() {
        // Texts from nsqd/protocol_v2.go v1.3.0 for cases the recordings do not cover.
        assert_eq!(
            error_text(b"MPUB bad!\n", INIT),
            "E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"bad!\" is not valid"
        );
        assert_eq!(error_text(b"PUB\n", INIT), "E_INVALID PUB insufficient number of parameters");
        assert_eq!(error_text(b"SUB t\n", INIT), "E_INVALID SUB insufficient number of parameters");
        assert_eq!(
            error_text(b"SUB t c\n", Session { state: ClientState::Init, heartbeats_enabled: false }),
            "E_INVALID cannot SUB with heartbeats disabled"
        );
        assert_eq!(error_text(b"RDY 1\n", INIT), "E_INVALID cannot RDY in current state");
        assert_eq!(error_text(b"RDY x\n", SUBSCRIBED), "E_INVALID RDY could not parse count x");
        assert_eq!(error_text(b"FIN 0123456789abcdef\n", INIT), "E_INVALID cannot FIN in current state");
        assert_eq!(error_text(b"FIN\n", SUBSCRIBED), "E_INVALID FIN insufficient number of params");
        assert_eq!(error_text(b"FIN abc\n", SUBSCRIBED), "E_INVALID invalid message ID");
        assert_eq!(
            error_text(b"REQ 0123456789abcdef\n", SUBSCRIBED),
            "E_INVALID REQ insufficient number of params"
        );
        assert_eq!(
            error_text(b"REQ 0123456789abcdef -5\n", SUBSCRIBED),
            "E_INVALID REQ could not parse timeout -5"
        );
        assert_eq!(error_text(b"TOUCH\n", CLOSING), "E_INVALID TOUCH insufficient number of params");
        assert_eq!(error_text(b"CLS\n", INIT), "E_INVALID cannot CLS in current state");
        assert_eq!(error_text(b"IDENTIFY\n", SUBSCRIBED), "E_INVALID cannot IDENTIFY in current state");
        assert_eq!(
            error_text(b"IDENTIFY\n\x00\x00\x00\x00", INIT),
            "E_BAD_BODY IDENTIFY invalid body size 0"
        );
        assert_eq!(
            error_text(b"IDENTIFY\n\x00\x00\x10\x01", INIT),
            "E_BAD_BODY IDENTIFY body too big 4097 > 4096"
        );
        assert_eq!(error_text(b"AUTH x\n", INIT), "E_INVALID AUTH invalid number of parameters");
        assert_eq!(
            error_text(b"DPUB t 3600001\n", INIT),
            "E_INVALID DPUB timeout 3600001 out of range 0-3600000"
        );
        assert_eq!(
            error_text(b"DPUB t 5\n\xff\xff\xff\xff", INIT),
            "E_BAD_MESSAGE DPUB invalid message body size -1"
        );
        assert_eq!(
            error_text(b"MPUB t\n\x00\x00\x00\x08\x00\x00\x00\x00", INIT),
            "E_BAD_BODY MPUB invalid message count 0"
        );
        assert_eq!(
            error_text(b"MPUB t\n\x00\x00\x00\x08\x00\x00\x04\x00", INIT),
            "E_BAD_BODY MPUB invalid message count 1024"
        );
        assert_eq!(
            error_text(b"MPUB t\n\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x04\x01", INIT),
            "E_BAD_MESSAGE MPUB message too big 1025 > 1024"
        );
        assert_eq!(error_text(b"\n", INIT), "E_INVALID invalid command ");
        assert_eq!(
            error_text(b"PUB a\"b\\c\x01\xff\n", INIT),
            "E_BAD_TOPIC PUB topic name \"a\\\"b\\\\c\\x01\\xff\" is not valid"
        );
    }

    #[test]
    fn state_is_checked_before_parameters() {
        // A SUB with a bad channel on a subscribed connection reports the state, as nsqd does.
        assert_eq!(error_text(b"SUB t bad!\n", SUBSCRIBED), "E_INVALID cannot SUB in current state");
        // RDY after CLS is ignored whatever it says.
        let mut buf = BytesMut::from(&b"RDY nonsense\n"[..]);
        assert_eq!(decode_command(&mut buf, &limits(), CLOSING).unwrap(), Some(Command::Nop));
        // FIN after CLS is allowed.
        let mut buf = BytesMut::from(&b"FIN 0123456789abcdef\n"[..]);
        assert!(matches!(decode_command(&mut buf, &limits(), CLOSING), Ok(Some(Command::Fin { .. }))));
    }

    #[test]
    fn errors_come_before_the_body_arrives() {
        // nsqd answers a bad topic without waiting for the body.
        assert!(error_text(b"PUB bad!\n", INIT).starts_with("E_BAD_TOPIC"));
        // And an empty MPUB message before the rest of the batch.
        assert!(error_text(b"MPUB t\n\x00\x00\x00\x20\x00\x00\x00\x03\x00\x00\x00\x00", INIT)
            .starts_with("E_BAD_MESSAGE MPUB invalid message(0)"));
    }

    #[test]
    fn partial_commands_wait() {
        let whole = b"MPUB t\n\x00\x00\x00\x0e\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x01b";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_command(&mut buf, &limits(), INIT).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn lines() {
        let mut buf = BytesMut::from(&b"NOP\r\nRDY\n"[..]);
        assert_eq!(decode_command(&mut buf, &limits(), SUBSCRIBED).unwrap(), Some(Command::Nop));
        // A bare RDY means 1, an empty count 0 (Go's ByteToBase10 of "").
        assert_eq!(decode_command(&mut buf, &limits(), SUBSCRIBED).unwrap(), Some(Command::Rdy { count: 1 }));
        let mut buf = BytesMut::from(&b"RDY \n"[..]);
        assert_eq!(decode_command(&mut buf, &limits(), SUBSCRIBED).unwrap(), Some(Command::Rdy { count: 0 }));
        // REQ delays are clamped, not refused.
        let mut buf = BytesMut::from(&b"REQ 0123456789abcdef 99999999\n"[..]);
        assert!(matches!(
            decode_command(&mut buf, &limits(), SUBSCRIBED).unwrap(),
            Some(Command::Req { delay_ms: 3_600_000, .. })
        ));
        let short = CommandLimits { max_line_bytes: 8, ..limits() };
        let mut buf = BytesMut::from(&b"NOPNOPNOP"[..]);
        assert_eq!(
            decode_command(&mut buf, &short, INIT),
            Err(CommandError::LineTooLong { max_line_bytes: 8 })
        );
        let mut buf = BytesMut::from(&b"NOPNOP"[..]);
        assert_eq!(decode_command(&mut buf, &short, INIT), Ok(None));
    }

    #[test]
    fn go_quoting() {
        let q = |raw: &[u8]| {
            let mut out = Vec::new();
            go_quote(raw, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(q(b"bad!topic"), "\"bad!topic\"");
        assert_eq!(q(b"tab\there"), "\"tab\\there\"");
        assert_eq!(q("é".as_bytes()), "\"é\"");
        assert_eq!(q("\u{a0}".as_bytes()), "\"\\u00a0\"");
        assert_eq!(q(b"\x7f"), "\"\\x7f\"");
    }
}
