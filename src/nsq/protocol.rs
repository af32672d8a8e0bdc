//! NSQ TCP protocol V2 as bytes and values: no I/O, no clock, no tokio.
//!
//! A client opens with [`MAGIC_V2`], then writes line-based commands (some followed by a
//! `[u32 size][data]` body) and reads frames: `[u32 size][u32 type][data]`, where `size`
//! counts the type and the data. Type 0 is a response (`OK`, `_heartbeat_`, `CLOSE_WAIT`,
//! the IDENTIFY JSON), 1 an error (`E_CODE description`), 2 a message
//! (`[i64 ns timestamp][u16 attempts][16-byte id][body]`).
//!
//! Encoders write into a caller's [`BytesMut`] (the connection reuses one buffer and pipelines
//! many commands into one write); [`decode_frame`] returns `Ok(None)` until a whole frame is
//! buffered and hands out [`Bytes`] slices of the read buffer, so a frame costs no copy and no
//! allocation per field. The server side of the same protocol (decoding a client's commands the
//! way nsqd does) lives in `server` (built for the tests only, feature `test-broker`).

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "test-broker"))]
pub mod server;

/// The four bytes a client sends first to pick protocol V2.
pub const MAGIC_V2: &[u8; 4] = b"  V2";

/// Frame type of a response (`OK`, heartbeat, `CLOSE_WAIT`, IDENTIFY JSON).
pub const FRAME_TYPE_RESPONSE: u32 = 0;
/// Frame type of an error (`E_CODE description`).
pub const FRAME_TYPE_ERROR: u32 = 1;
/// Frame type of a message.
pub const FRAME_TYPE_MESSAGE: u32 = 2;

/// The `u32` size that starts every frame.
pub(crate) const FRAME_SIZE_BYTES: usize = 4;
/// The `u32` frame type, counted by the size.
pub(crate) const FRAME_TYPE_BYTES: usize = 4;
/// Message ids are 16 bytes; nsqd fills them with ASCII hex.
pub(crate) const MESSAGE_ID_BYTES: usize = 16;
/// A message frame's data before its body: timestamp, attempts, id.
pub(crate) const MESSAGE_HEADER_BYTES: usize = 8 + 2 + MESSAGE_ID_BYTES;

/// Longest topic or channel name nsqd accepts, `#ephemeral` included.
pub(crate) const MAX_NAME_BYTES: usize = 64;
/// Suffix that makes a topic or channel disappear with its last client.
pub(crate) const EPHEMERAL_SUFFIX: &str = "#ephemeral";

/// nsqd's answer to PUB, MPUB, DPUB, SUB and IDENTIFY without feature negotiation.
pub const OK: &[u8] = b"OK";
/// Sent by nsqd every heartbeat interval; the client must answer with NOP.
pub const HEARTBEAT: &[u8] = b"_heartbeat_";
/// nsqd's answer to CLS.
pub const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";

/// nsqd's default `--max-msg-size` (1 MiB).
pub(crate) const NSQD_DEFAULT_MAX_MSG_BYTES: usize = 1024 * 1024;
/// A frame size limit that fits any message nsqd accepts with its default `--max-msg-size`:
/// the size field counts the type and the message header on top of the body.
pub(crate) const DEFAULT_MAX_FRAME_BYTES: usize =
    NSQD_DEFAULT_MAX_MSG_BYTES + FRAME_TYPE_BYTES + MESSAGE_HEADER_BYTES;

/// One frame from nsqd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Type 0: `OK`, `_heartbeat_`, `CLOSE_WAIT`, or the IDENTIFY JSON.
    Response(Bytes),
    /// Type 1: an error; see [`ServerError::is_fatal`].
    Error(ServerError),
    /// Type 2: a message to process and then FIN, REQ or TOUCH.
    Message(Message),
}

impl Frame {
    /// A `_heartbeat_` response, which the client answers with NOP.
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, Frame::Response(data) if data.as_ref() == HEARTBEAT)
    }

    /// An `OK` response.
    pub fn is_ok(&self) -> bool {
        matches!(self, Frame::Response(data) if data.as_ref() == OK)
    }

    /// The `CLOSE_WAIT` answer to CLS.
    pub(crate) fn is_close_wait(&self) -> bool {
        matches!(self, Frame::Response(data) if data.as_ref() == CLOSE_WAIT)
    }
}

/// A message id as nsqd sends it: 16 bytes, ASCII hex in practice. Kept as bytes because FIN,
/// REQ and TOUCH must echo exactly what the server sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; MESSAGE_ID_BYTES]);

impl MessageId {
    /// The id in `bytes`, or `None` unless it is exactly 16 bytes long.
    #[cfg(any(test, feature = "test-broker"))]
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; MESSAGE_ID_BYTES]>::try_from(bytes).ok().map(MessageId)
    }

    /// The 16 bytes as sent on the wire.
    pub fn as_bytes(&self) -> &[u8; MESSAGE_ID_BYTES] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printable ids (all of nsqd's) print as they are; anything else escaped, so a log
        // line never carries control bytes from the network.
        for &b in &self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A message frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// When nsqd first received the message, Unix ns.
    pub timestamp_ns: i64,
    /// Deliveries so far, this one included (1 on the first delivery).
    pub attempts: u16,
    /// The id to FIN, REQ or TOUCH.
    pub id: MessageId,
    /// What the producer published, a slice of the read buffer.
    pub body: Bytes,
}

impl Message {
    /// Decodes the data of a type-2 frame (after size and type).
    pub(crate) fn decode(mut data: Bytes) -> Result<Message, FrameError> {
        if data.len() < MESSAGE_HEADER_BYTES {
            return Err(FrameError::ShortMessage { len: data.len() });
        }
        let timestamp_ns = data.get_i64();
        let attempts = data.get_u16();
        let mut id = [0u8; MESSAGE_ID_BYTES];
        data.copy_to_slice(&mut id);
        Ok(Message { timestamp_ns, attempts, id: MessageId(id), body: data })
    }

    /// Appends the data of a type-2 frame (no size, no type): the inverse of [`Message::decode`].
    #[cfg(test)]
    fn encode_data(&self, buf: &mut BytesMut) {
        buf.reserve(MESSAGE_HEADER_BYTES + self.body.len());
        buf.put_i64(self.timestamp_ns);
        buf.put_u16(self.attempts);
        buf.put_slice(&self.id.0);
        buf.put_slice(&self.body);
    }
}

/// The error codes nsqd v1.3.0 sends (`nsqd/protocol_v2.go`, `nsqd/tcp.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `E_INVALID`: unknown command, bad parameters, or a command in the wrong state.
    Invalid,
    /// `E_BAD_BODY`: IDENTIFY/AUTH/MPUB body size or content.
    BadBody,
    /// `E_BAD_TOPIC`: invalid topic name.
    BadTopic,
    /// `E_BAD_CHANNEL`: invalid channel name.
    BadChannel,
    /// `E_BAD_MESSAGE`: empty or too big message.
    BadMessage,
    /// `E_PUB_FAILED`: the topic is exiting.
    PubFailed,
    /// `E_MPUB_FAILED`: the topic is exiting.
    MpubFailed,
    /// `E_DPUB_FAILED`: the topic is exiting.
    DpubFailed,
    /// `E_FIN_FAILED`: the id is not in flight for this client. Not fatal.
    FinFailed,
    /// `E_REQ_FAILED`: the id is not in flight for this client. Not fatal.
    ReqFailed,
    /// `E_TOUCH_FAILED`: the id is not in flight for this client. Not fatal.
    TouchFailed,
    /// `E_SUB_FAILED`: the channel is exiting or has too many consumers.
    SubFailed,
    /// `E_IDENTIFY_FAILED`: feature negotiation failed.
    IdentifyFailed,
    /// `E_AUTH_FIRST`: auth is enabled and the client has not sent AUTH.
    AuthFirst,
    /// `E_AUTH_FAILED`: the auth server refused or failed.
    AuthFailed,
    /// `E_AUTH_DISABLED`: AUTH sent to a server without auth.
    AuthDisabled,
    /// `E_AUTH_ERROR`: the AUTH answer could not be sent.
    AuthError,
    /// `E_UNAUTHORIZED`: no permission for this topic/channel.
    Unauthorized,
    /// `E_BAD_PROTOCOL`: the magic was not `  V2`.
    BadProtocol,
    /// Anything else; treated as fatal, as nsqd closes on every error but three.
    Unknown,
}

impl ErrorCode {
    /// Every known code, for tests and tables.
    pub(crate) const KNOWN: [ErrorCode; 19] = [
        ErrorCode::Invalid,
        ErrorCode::BadBody,
        ErrorCode::BadTopic,
        ErrorCode::BadChannel,
        ErrorCode::BadMessage,
        ErrorCode::PubFailed,
        ErrorCode::MpubFailed,
        ErrorCode::DpubFailed,
        ErrorCode::FinFailed,
        ErrorCode::ReqFailed,
        ErrorCode::TouchFailed,
        ErrorCode::SubFailed,
        ErrorCode::IdentifyFailed,
        ErrorCode::AuthFirst,
        ErrorCode::AuthFailed,
        ErrorCode::AuthDisabled,
        ErrorCode::AuthError,
        ErrorCode::Unauthorized,
        ErrorCode::BadProtocol,
    ];

    /// The code as it appears on the wire (`"UNKNOWN"` for [`ErrorCode::Unknown`]).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "E_INVALID",
            ErrorCode::BadBody => "E_BAD_BODY",
            ErrorCode::BadTopic => "E_BAD_TOPIC",
            ErrorCode::BadChannel => "E_BAD_CHANNEL",
            ErrorCode::BadMessage => "E_BAD_MESSAGE",
            ErrorCode::PubFailed => "E_PUB_FAILED",
            ErrorCode::MpubFailed => "E_MPUB_FAILED",
            ErrorCode::DpubFailed => "E_DPUB_FAILED",
            ErrorCode::FinFailed => "E_FIN_FAILED",
            ErrorCode::ReqFailed => "E_REQ_FAILED",
            ErrorCode::TouchFailed => "E_TOUCH_FAILED",
            ErrorCode::SubFailed => "E_SUB_FAILED",
            ErrorCode::IdentifyFailed => "E_IDENTIFY_FAILED",
            ErrorCode::AuthFirst => "E_AUTH_FIRST",
            ErrorCode::AuthFailed => "E_AUTH_FAILED",
            ErrorCode::AuthDisabled => "E_AUTH_DISABLED",
            ErrorCode::AuthError => "E_AUTH_ERROR",
            ErrorCode::Unauthorized => "E_UNAUTHORIZED",
            ErrorCode::BadProtocol => "E_BAD_PROTOCOL",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The code an error text starts with. nsqd writes `CODE description` (or the bare code
    /// for `E_BAD_PROTOCOL`), so the code is the text up to the first space; comparing that
    /// whole token keeps `E_AUTH_FIRST` and `E_AUTH_FAILED` apart.
    pub(crate) fn from_text(text: &[u8]) -> ErrorCode {
        let token = text.split(|&b| b == b' ').next().unwrap_or_default();
        ErrorCode::KNOWN.into_iter().find(|c| c.as_str().as_bytes() == token).unwrap_or(ErrorCode::Unknown)
    }

    /// Whether nsqd closes the connection after sending this error. Only a failed FIN, REQ or
    /// TOUCH (an id no longer in flight, typically after a msg_timeout) leaves it open; after
    /// any other error every command pipelined behind the failed one is lost.
    pub(crate) fn is_fatal(self) -> bool {
        !matches!(self, ErrorCode::FinFailed | ErrorCode::ReqFailed | ErrorCode::TouchFailed)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error frame: its code and the whole text (`E_CODE description`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Parsed from the start of `text`.
    pub code: ErrorCode,
    /// The frame's data as sent, code included.
    pub text: Bytes,
}

impl ServerError {
    /// Wraps an error frame's data.
    pub fn new(text: Bytes) -> ServerError {
        ServerError { code: ErrorCode::from_text(&text), text }
    }

    /// Builds the error nsqd sends: `code`, a space, `description`.
    pub fn from_parts(code: ErrorCode, description: &[u8]) -> ServerError {
        let mut text = BytesMut::with_capacity(code.as_str().len() + 1 + description.len());
        text.put_slice(code.as_str().as_bytes());
        text.put_u8(b' ');
        text.put_slice(description);
        ServerError { code, text: text.freeze() }
    }

    /// See [`ErrorCode::is_fatal`].
    pub fn is_fatal(&self) -> bool {
        self.code.is_fatal()
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

impl std::error::Error for ServerError {}

/// Why the byte stream from the server is not a valid frame. The stream cannot be resynced
/// after any of these: the connection must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared size is over the limit; nothing was allocated for it.
    #[error("frame of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Declared size (type + data).
        size: u32,
        /// The limit given to [`decode_frame`].
        max: usize,
    },
    /// The declared size cannot even hold the frame type.
    #[error("frame size {size} is smaller than the frame type")]
    TooSmall {
        /// Declared size.
        size: u32,
    },
    /// A frame type other than 0, 1, 2.
    #[error("unknown frame type {0}")]
    UnknownType(u32),
    /// A message frame too short for timestamp, attempts and id.
    #[error("message frame of {len} bytes is shorter than its header")]
    ShortMessage {
        /// Data bytes after the type.
        len: usize,
    },
}

/// Decodes one frame from the front of `buf`.
///
/// `max_frame_bytes` bounds the declared size (which counts the 4-byte type and the data, not
/// the size field itself) and is checked before anything is reserved, so a hostile or corrupt
/// size cannot make the client allocate. Returns `Ok(None)` while the frame is incomplete,
/// after reserving room for the rest of it.
pub fn decode_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, FrameError> {
    let Some(size_bytes) = buf.get(..FRAME_SIZE_BYTES) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([size_bytes[0], size_bytes[1], size_bytes[2], size_bytes[3]]);
    let declared = usize::try_from(size).unwrap_or(usize::MAX);
    if declared < FRAME_TYPE_BYTES {
        return Err(FrameError::TooSmall { size });
    }
    if declared > max_frame_bytes {
        return Err(FrameError::TooLarge { size, max: max_frame_bytes });
    }
    let total = FRAME_SIZE_BYTES + declared;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_SIZE_BYTES);
    let frame_type = frame.get_u32();
    match frame_type {
        FRAME_TYPE_RESPONSE => Ok(Some(Frame::Response(frame))),
        FRAME_TYPE_ERROR => Ok(Some(Frame::Error(ServerError::new(frame)))),
        FRAME_TYPE_MESSAGE => Message::decode(frame).map(|m| Some(Frame::Message(m))),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// Appends a whole frame (size, type, data): what a server writes. The client never needs it;
/// the test broker and the tests do.
pub fn encode_frame(frame_type: u32, data: &[u8], buf: &mut BytesMut) {
    buf.reserve(FRAME_SIZE_BYTES + FRAME_TYPE_BYTES + data.len());
    // Frames come from our own broker and tests, far below 4 GiB; saturating keeps a misuse
    // visible (the peer rejects the size) instead of wrapping.
    let size = u32::try_from(FRAME_TYPE_BYTES + data.len()).unwrap_or(u32::MAX);
    buf.put_u32(size);
    buf.put_u32(frame_type);
    buf.put_slice(data);
}

/// Whether `name` is a valid topic or channel name for nsqd: `^[.a-zA-Z0-9_-]+(#ephemeral)?$`,
/// 1 to 64 bytes in all.
pub fn valid_name(name: impl AsRef<[u8]>) -> bool {
    let name = name.as_ref();
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return false;
    }
    let base = name.strip_suffix(EPHEMERAL_SUFFIX.as_bytes()).unwrap_or(name);
    !base.is_empty() && base.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the client tells nsqd in IDENTIFY. Numbers follow nsqd's convention: 0 keeps the
/// server's default, -1 disables (heartbeats, output buffering).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentifyConfig {
    /// Shown in nsqd's stats (`client_id`).
    pub client_id: String,
    /// Shown in nsqd's stats.
    pub hostname: String,
    /// Shown in nsqd's stats, e.g. `logmill/0.1.0`.
    pub user_agent: String,
    /// Ask for the JSON answer instead of `OK`.
    pub feature_negotiation: bool,
    /// Milliseconds between heartbeats; nsqd drops a client silent for twice this.
    pub heartbeat_interval: i64,
    /// Milliseconds a delivered message may stay un-FINished before redelivery.
    pub msg_timeout: i64,
    /// Bytes nsqd buffers before writing to this client.
    pub output_buffer_size: i64,
    /// Milliseconds nsqd waits before flushing its buffer to this client.
    pub output_buffer_timeout: i64,
    /// Percent of messages to deliver (0 = all).
    pub sample_rate: i32,
    /// Upgrade to TLS after IDENTIFY (`nsq.tls`).
    pub tls_v1: bool,
    /// Upgrade to deflate after IDENTIFY (not supported by logmill).
    pub deflate: bool,
    /// Deflate level.
    pub deflate_level: i64,
    /// Upgrade to snappy after IDENTIFY (not supported by logmill).
    pub snappy: bool,
}

/// nsqd's JSON answer to IDENTIFY with `feature_negotiation`, fields in nsqd's order (which
/// is also the order the test broker writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentifyResponse {
    /// Largest RDY the server accepts; a larger one closes the connection.
    pub max_rdy_count: i64,
    /// nsqd's version.
    pub version: String,
    /// Largest msg_timeout (ms) the server accepts.
    pub max_msg_timeout: i64,
    /// The msg_timeout (ms) in force for this client.
    pub msg_timeout: i64,
    /// TLS negotiated.
    pub tls_v1: bool,
    /// Deflate negotiated.
    pub deflate: bool,
    /// Deflate level in force.
    pub deflate_level: i64,
    /// Largest deflate level.
    pub max_deflate_level: i64,
    /// Snappy negotiated.
    pub snappy: bool,
    /// Sample rate in force.
    pub sample_rate: i32,
    /// The client must AUTH before anything else.
    pub auth_required: bool,
    /// Output buffer size (bytes) in force.
    pub output_buffer_size: i64,
    /// Output buffer timeout (ms) in force.
    pub output_buffer_timeout: i64,
}

/// Why a command could not be encoded. The buffer is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The topic does not match nsqd's rule; nsqd would close the connection.
    #[error("invalid topic name")]
    InvalidTopic,
    /// The channel does not match nsqd's rule; nsqd would close the connection.
    #[error("invalid channel name")]
    InvalidChannel,
    /// nsqd rejects empty messages with a fatal E_BAD_MESSAGE.
    #[error("empty message body")]
    EmptyBody,
    /// MPUB needs at least one message.
    #[error("MPUB without messages")]
    NoMessages,
    /// A body does not fit the protocol's `u32` size.
    #[error("body of {len} bytes is too large for the protocol")]
    TooLarge {
        /// Bytes of the body.
        len: usize,
    },
    /// The IDENTIFY JSON could not be written.
    #[error("IDENTIFY body: {0}")]
    Json(#[from] serde_json::Error),
}

fn check_topic(topic: &str) -> Result<(), EncodeError> {
    if valid_name(topic) {
        Ok(())
    } else {
        Err(EncodeError::InvalidTopic)
    }
}

fn size_u32(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLarge { len })
}

/// `IDENTIFY\n[u32 size][json]`.
pub fn encode_identify(config: &IdentifyConfig, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_slice(b"IDENTIFY\n");
    let size_at = buf.len();
    buf.put_u32(0);
    if let Err(e) = serde_json::to_writer((&mut *buf).writer(), config) {
        buf.truncate(start);
        return Err(e.into());
    }
    patch_u32(buf, size_at, start)
}

/// `AUTH\n[u32 size][secret]`.
pub fn encode_auth(secret: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    let size = size_u32(secret.len())?;
    buf.reserve(5 + 4 + secret.len());
    buf.put_slice(b"AUTH\n");
    buf.put_u32(size);
    buf.put_slice(secret);
    Ok(())
}

/// `SUB <topic> <channel>\n`.
pub fn encode_sub(topic: &str, channel: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    check_topic(topic)?;
    if !valid_name(channel) {
        return Err(EncodeError::InvalidChannel);
    }
    buf.reserve(4 + topic.len() + 1 + channel.len() + 1);
    buf.put_slice(b"SUB ");
    buf.put_slice(topic.as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(channel.as_bytes());
    buf.put_u8(b'\n');
    Ok(())
}

/// `PUB <topic>\n[u32 size][body]`.
pub fn encode_pub(topic: &str, body: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    check_topic(topic)?;
    if body.is_empty() {
        return Err(EncodeError::EmptyBody);
    }
    let size = size_u32(body.len())?;
    buf.reserve(4 + topic.len() + 1 + 4 + body.len());
    buf.put_slice(b"PUB ");
    buf.put_slice(topic.as_bytes());
    buf.put_u8(b'\n');
    buf.put_u32(size);
    buf.put_slice(body);
    Ok(())
}

/// `MPUB <topic>\n[u32 size][u32 count]([u32 size][body])…`.
pub fn encode_mpub<I>(topic: &str, bodies: I, buf: &mut BytesMut) -> Result<(), EncodeError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    check_topic(topic)?;
    let start = buf.len();
    buf.put_slice(b"MPUB ");
    buf.put_slice(topic.as_bytes());
    buf.put_u8(b'\n');
    let size_at = buf.len();
    buf.put_u32(0);
    buf.put_u32(0);
    let mut count: u32 = 0;
    for body in bodies {
        let body = body.as_ref();
        let checked = if body.is_empty() {
            Err(EncodeError::EmptyBody)
        } else {
            size_u32(body.len()).and_then(|s| {
                count.checked_add(1).map(|c| (s, c)).ok_or(EncodeError::TooLarge { len: body.len() })
            })
        };
        match checked {
            Ok((size, next)) => {
                buf.reserve(4 + body.len());
                buf.put_u32(size);
                buf.put_slice(body);
                count = next;
            }
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
    if count == 0 {
        buf.truncate(start);
        return Err(EncodeError::NoMessages);
    }
    buf[size_at + 4..size_at + 8].copy_from_slice(&count.to_be_bytes());
    patch_u32(buf, size_at, start)
}

/// `DPUB <topic> <delay_ms>\n[u32 size][body]`: deliver after `delay_ms`.
pub fn encode_dpub(topic: &str, delay_ms: u32, body: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    check_topic(topic)?;
    if body.is_empty() {
        return Err(EncodeError::EmptyBody);
    }
    let size = size_u32(body.len())?;
    buf.reserve(5 + topic.len() + 12 + 4 + body.len());
    buf.put_slice(b"DPUB ");
    buf.put_slice(topic.as_bytes());
    buf.put_u8(b' ');
    put_decimal(buf, delay_ms);
    buf.put_u8(b'\n');
    buf.put_u32(size);
    buf.put_slice(body);
    Ok(())
}

/// `RDY <count>\n`: the client's window of messages in flight.
pub fn encode_rdy(count: u32, buf: &mut BytesMut) {
    buf.put_slice(b"RDY ");
    put_decimal(buf, count);
    buf.put_u8(b'\n');
}

/// `FIN <id>\n`: the message is done.
pub fn encode_fin(id: &MessageId, buf: &mut BytesMut) {
    buf.put_slice(b"FIN ");
    buf.put_slice(&id.0);
    buf.put_u8(b'\n');
}

/// `REQ <id> <delay_ms>\n`: deliver the message again after `delay_ms`.
pub fn encode_req(id: &MessageId, delay_ms: u32, buf: &mut BytesMut) {
    buf.put_slice(b"REQ ");
    buf.put_slice(&id.0);
    buf.put_u8(b' ');
    put_decimal(buf, delay_ms);
    buf.put_u8(b'\n');
}

/// `TOUCH <id>\n`: restart the message's msg_timeout.
pub fn encode_touch(id: &MessageId, buf: &mut BytesMut) {
    buf.put_slice(b"TOUCH ");
    buf.put_slice(&id.0);
    buf.put_u8(b'\n');
}

/// `CLS\n`: stop delivering; nsqd answers `CLOSE_WAIT`.
pub(crate) fn encode_cls(buf: &mut BytesMut) {
    buf.put_slice(b"CLS\n");
}

/// `NOP\n`: the answer to a heartbeat.
pub fn encode_nop(buf: &mut BytesMut) {
    buf.put_slice(b"NOP\n");
}

/// Writes the body size counted from after the size field at `size_at` to the end of `buf`;
/// on overflow restores `buf` to `start`.
fn patch_u32(buf: &mut BytesMut, size_at: usize, start: usize) -> Result<(), EncodeError> {
    let len = buf.len() - size_at - 4;
    match u32::try_from(len) {
        Ok(size) => {
            buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
            Ok(())
        }
        Err(_) => {
            buf.truncate(start);
            Err(EncodeError::TooLarge { len })
        }
    }
}

fn put_decimal(buf: &mut BytesMut, n: u32) {
    // u32::MAX has 10 digits; formatting into a stack array avoids a String per command.
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::server::{decode_command, ClientState, Command, CommandLimits, Session};
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(frame_type: u32, data: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame(frame_type, data, &mut b);
        b
    }

    fn id(s: &str) -> MessageId {
        MessageId::from_slice(s.as_bytes()).unwrap()
    }

    const SUBSCRIBED: Session = Session { state: ClientState::Subscribed, heartbeats_enabled: true };
    const INIT: Session = Session { state: ClientState::Init, heartbeats_enabled: true };

    fn server_decode(bytes: &[u8], session: Session) -> Command {
        let mut buf = BytesMut::from(bytes);
        let cmd = decode_command(&mut buf, &CommandLimits::default(), session).unwrap().unwrap();
        assert!(buf.is_empty(), "decode_command left {} bytes", buf.len());
        cmd
    }

    #[test]
    fn decodes_recorded_frames() {
        // From ../shared/nsq-conformance/sub_rdy_fin.json and heartbeat.json.
        let mut buf = BytesMut::from(
            &b"\x00\x00\x00\x06\x00\x00\x00\x00OK\x00\x00\x00\x0f\x00\x00\x00\x00_heartbeat_"[..],
        );
        let ok = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(ok.is_ok());
        let hb = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(hb.is_heartbeat());
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);

        let text = b"E_FIN_FAILED FIN 18a2affbeda69000 failed ID not in flight";
        let mut buf = frame_bytes(FRAME_TYPE_ERROR, text);
        let Some(Frame::Error(e)) = decode_frame(&mut buf, 1024).unwrap() else { panic!("not an error") };
        assert_eq!(e.code, ErrorCode::FinFailed);
        assert!(!e.is_fatal());
        assert_eq!(e.text.as_ref(), text);

        let mut data = BytesMut::new();
        data.put_i64(1_795_235_096_922_688_758);
        data.put_u16(1);
        data.put_slice(b"18a2affbeda69000");
        data.put_slice(b"first");
        assert_eq!(data.len() + 4, 35, "size recorded in sub_rdy_fin.json");
        let mut buf = frame_bytes(FRAME_TYPE_MESSAGE, &data);
        let Some(Frame::Message(m)) = decode_frame(&mut buf, 1024).unwrap() else { panic!("not a message") };
        assert_eq!(m.timestamp_ns, 1_795_235_096_922_688_758);
        assert_eq!(m.attempts, 1);
        assert_eq!(m.id, id("18a2affbeda69000"));
        assert_eq!(m.body.as_ref(), b"first");
        let mut again = BytesMut::new();
        m.encode_data(&mut again);
        assert_eq!(again, data);
    }

    #[test]
    fn partial_frames_need_more() {
        let whole = frame_bytes(FRAME_TYPE_RESPONSE, b"CLOSE_WAIT");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_frame(&mut buf, 64).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
            buf.extend_from_slice(&whole[cut..]);
            assert!(decode_frame(&mut buf, 64).unwrap().unwrap().is_close_wait());
        }
    }

    #[test]
    fn oversized_frame_rejected_before_allocating() {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(0x7fff_ffff);
        buf.put_u32(FRAME_TYPE_MESSAGE);
        let capacity = buf.capacity();
        assert_eq!(
            decode_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge { size: 0x7fff_ffff, max: 1 << 20 })
        );
        assert_eq!(buf.capacity(), capacity, "no reservation for a rejected frame");
        // Exactly at the limit is fine.
        let mut buf = frame_bytes(FRAME_TYPE_RESPONSE, b"OK");
        assert!(decode_frame(&mut buf, 6).unwrap().unwrap().is_ok());
        let mut buf = frame_bytes(FRAME_TYPE_RESPONSE, b"OK");
        assert!(matches!(decode_frame(&mut buf, 5), Err(FrameError::TooLarge { size: 6, max: 5 })));
    }

    #[test]
    fn malformed_frames() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 64), Err(FrameError::TooSmall { size: 3 }));
        let mut buf = frame_bytes(7, b"x");
        assert_eq!(decode_frame(&mut buf, 64), Err(FrameError::UnknownType(7)));
        let mut buf = frame_bytes(FRAME_TYPE_MESSAGE, &[0u8; 25]);
        assert_eq!(decode_frame(&mut buf, 64), Err(FrameError::ShortMessage { len: 25 }));
        // A message with an empty body is well formed.
        let mut buf = frame_bytes(FRAME_TYPE_MESSAGE, &[b'a'; 26]);
        assert!(matches!(decode_frame(&mut buf, 64), Ok(Some(Frame::Message(m))) if m.body.is_empty()));
    }

    #[test]
    fn error_codes_by_prefix() {
        let cases: &[(&[u8], ErrorCode, bool)] = &[
            (b"E_BAD_PROTOCOL", ErrorCode::BadProtocol, true),
            (b"E_INVALID invalid command WHAT", ErrorCode::Invalid, true),
            (b"E_BAD_BODY MPUB body too big 5024 > 4096", ErrorCode::BadBody, true),
            (b"E_BAD_TOPIC PUB topic name \"bad!\" is not valid", ErrorCode::BadTopic, true),
            (b"E_BAD_CHANNEL SUB channel name \"bad!ch\" is not valid", ErrorCode::BadChannel, true),
            (b"E_BAD_MESSAGE PUB invalid message body size 0", ErrorCode::BadMessage, true),
            (b"E_PUB_FAILED PUB failed exiting", ErrorCode::PubFailed, true),
            (b"E_MPUB_FAILED MPUB failed exiting", ErrorCode::MpubFailed, true),
            (b"E_DPUB_FAILED DPUB failed exiting", ErrorCode::DpubFailed, true),
            (b"E_FIN_FAILED FIN x failed ID not in flight", ErrorCode::FinFailed, false),
            (b"E_REQ_FAILED REQ x failed ID not in flight", ErrorCode::ReqFailed, false),
            (b"E_TOUCH_FAILED TOUCH x failed ID not in flight", ErrorCode::TouchFailed, false),
            (b"E_AUTH_FIRST AUTH required before SUB", ErrorCode::AuthFirst, true),
            (b"E_AUTH_FAILED AUTH failed", ErrorCode::AuthFailed, true),
            (b"E_AUTH_DISABLED AUTH disabled", ErrorCode::AuthDisabled, true),
            (b"E_UNAUTHORIZED AUTH no authorizations found", ErrorCode::Unauthorized, true),
            (b"E_SOMETHING_NEW x", ErrorCode::Unknown, true),
            (b"E_FIN_FAILEDX x", ErrorCode::Unknown, true),
            (b"", ErrorCode::Unknown, true),
        ];
        for &(text, code, fatal) in cases {
            let e = ServerError::new(Bytes::copy_from_slice(text));
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(text));
            assert_eq!(e.is_fatal(), fatal, "{}", String::from_utf8_lossy(text));
        }
        for code in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::from_text(code.as_str().as_bytes()), code);
        }
        let e = ServerError::from_parts(ErrorCode::Invalid, b"cannot SUB in current state");
        assert_eq!(e.to_string(), "E_INVALID cannot SUB in current state");
    }

    #[test]
    fn names() {
        assert!(valid_name("logs"));
        assert!(valid_name("a.b_c-d#ephemeral"));
        assert!(valid_name("t".repeat(64)));
        assert!(valid_name(format!("{}#ephemeral", "t".repeat(54))));
        assert!(!valid_name(format!("{}#ephemeral", "t".repeat(55))));
        assert!(!valid_name("t".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("#ephemeral"));
        assert!(!valid_name("bad!topic"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a#ephemeral#ephemeral"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("é"));
    }

    #[test]
    fn encodes_recorded_commands() {
        // Byte for byte what the recordings in ../shared/nsq-conformance/ sent.
        let mut b = BytesMut::new();
        encode_pub("conf_topic", b"hello", &mut b).unwrap();
        assert_eq!(&b[..], b"PUB conf_topic\n\x00\x00\x00\x05hello");
        let mut b = BytesMut::new();
        encode_mpub("conf_mpub", [&b"one"[..], b"two", b"three"], &mut b).unwrap();
        assert_eq!(
            &b[..],
            b"MPUB conf_mpub\n\x00\x00\x00\x1b\x00\x00\x00\x03\x00\x00\x00\x03one\x00\x00\x00\x03two\x00\x00\x00\x05three"
        );
        let mut b = BytesMut::new();
        encode_dpub("conf_dpub", 1000, b"later", &mut b).unwrap();
        assert_eq!(&b[..], b"DPUB conf_dpub 1000\n\x00\x00\x00\x05later");
        let mut b = BytesMut::new();
        encode_sub("conf_sub", "ch", &mut b).unwrap();
        encode_rdy(2, &mut b);
        encode_fin(&id("18a2affbeda69000"), &mut b);
        encode_req(&id("18a2affd54669000"), 0, &mut b);
        encode_touch(&id("18a2affd54669000"), &mut b);
        encode_nop(&mut b);
        encode_cls(&mut b);
        assert_eq!(
            &b[..],
            &b"SUB conf_sub ch\nRDY 2\nFIN 18a2affbeda69000\nREQ 18a2affd54669000 0\nTOUCH 18a2affd54669000\nNOP\nCLS\n"[..]
        );
        let mut b = BytesMut::new();
        encode_rdy(u32::MAX, &mut b);
        assert_eq!(&b[..], b"RDY 4294967295\n");
    }

    #[test]
    fn encoders_refuse_what_nsqd_would_close_on() {
        let mut b = BytesMut::from(&b"NOP\n"[..]);
        assert!(matches!(encode_pub("bad!", b"x", &mut b), Err(EncodeError::InvalidTopic)));
        assert!(matches!(encode_pub("t", b"", &mut b), Err(EncodeError::EmptyBody)));
        assert!(matches!(encode_sub("t", "c h", &mut b), Err(EncodeError::InvalidChannel)));
        assert!(matches!(encode_mpub("t", [&b"a"[..], b""], &mut b), Err(EncodeError::EmptyBody)));
        assert!(matches!(encode_mpub("t", Vec::<&[u8]>::new(), &mut b), Err(EncodeError::NoMessages)));
        assert!(matches!(encode_dpub("t", 5, b"", &mut b), Err(EncodeError::EmptyBody)));
        assert_eq!(&b[..], b"NOP\n", "failed encoders leave the buffer as it was");
    }

    #[test]
    fn identify_round_trip() {
        let config = IdentifyConfig {
            client_id: "agent-1".into(),
            hostname: "node-1".into(),
            user_agent: "logmill/0.1.0".into(),
            feature_negotiation: true,
            heartbeat_interval: 30_000,
            msg_timeout: 60_000,
            ..IdentifyConfig::default()
        };
        let mut b = BytesMut::new();
        encode_identify(&config, &mut b).unwrap();
        assert!(b.starts_with(b"IDENTIFY\n"));
        let size = u32::from_be_bytes([b[9], b[10], b[11], b[12]]) as usize;
        assert_eq!(size, b.len() - 13);
        let back: IdentifyConfig = serde_json::from_slice(&b[13..]).unwrap();
        assert_eq!(back, config);
        let Command::Identify { body } = server_decode(&b, INIT) else { panic!("not IDENTIFY") };
        assert_eq!(body.as_ref(), &b[13..]);
        // Go's zero values: a body with only some keys is valid.
        let sparse: IdentifyConfig = serde_json::from_slice(br#"{"feature_negotiation": true}"#).unwrap();
        assert!(sparse.feature_negotiation);
        assert_eq!(sparse.heartbeat_interval, 0);
    }

    #[test]
    fn identify_response_from_recording() {
        let json = br#"{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,"msg_timeout":60000,"tls_v1":false,"deflate":false,"deflate_level":6,"max_deflate_level":6,"snappy":false,"sample_rate":0,"auth_required":false,"output_buffer_size":16384,"output_buffer_timeout":250}"#;
        let r: IdentifyResponse = serde_json::from_slice(json).unwrap();
        assert_eq!(r.max_rdy_count, 2500);
        assert_eq!(r.msg_timeout, 60_000);
        assert_eq!(serde_json::to_vec(&r).unwrap(), json.to_vec(), "field order is nsqd's");
    }

    #[test]
    fn every_command_round_trips_through_the_server_decoder() {
        let mut b = BytesMut::new();
        encode_auth(b"s3cret", &mut b).unwrap();
        assert_eq!(server_decode(&b, INIT), Command::Auth { secret: Bytes::from_static(b"s3cret") });
        let mut b = BytesMut::new();
        encode_sub("logs", "logmill#ephemeral", &mut b).unwrap();
        assert_eq!(
            server_decode(&b, INIT),
            Command::Sub { topic: "logs".into(), channel: "logmill#ephemeral".into() }
        );
        let mut b = BytesMut::new();
        encode_pub("metrics", b"cpu value=1", &mut b).unwrap();
        assert_eq!(
            server_decode(&b, INIT),
            Command::Pub { topic: "metrics".into(), body: Bytes::from_static(b"cpu value=1") }
        );
        let mut b = BytesMut::new();
        encode_mpub("metrics", [&b"a"[..], b"bb", b"ccc"], &mut b).unwrap();
        assert_eq!(
            server_decode(&b, INIT),
            Command::Mpub {
                topic: "metrics".into(),
                bodies: vec![Bytes::from_static(b"a"), Bytes::from_static(b"bb"), Bytes::from_static(b"ccc")]
            }
        );
        let mut b = BytesMut::new();
        encode_dpub("metrics", 1500, b"later", &mut b).unwrap();
        assert_eq!(
            server_decode(&b, INIT),
            Command::Dpub { topic: "metrics".into(), delay_ms: 1500, body: Bytes::from_static(b"later") }
        );
        let mut b = BytesMut::new();
        encode_rdy(2500, &mut b);
        assert_eq!(server_decode(&b, SUBSCRIBED), Command::Rdy { count: 2500 });
        let the_id = id("0123456789abcdef");
        let mut b = BytesMut::new();
        encode_fin(&the_id, &mut b);
        assert_eq!(server_decode(&b, SUBSCRIBED), Command::Fin { id: the_id });
        let mut b = BytesMut::new();
        encode_req(&the_id, 250, &mut b);
        assert_eq!(server_decode(&b, SUBSCRIBED), Command::Req { id: the_id, delay_ms: 250 });
        let mut b = BytesMut::new();
        encode_touch(&the_id, &mut b);
        assert_eq!(server_decode(&b, SUBSCRIBED), Command::Touch { id: the_id });
        let mut b = BytesMut::new();
        encode_cls(&mut b);
        assert_eq!(server_decode(&b, SUBSCRIBED), Command::Cls);
        let mut b = BytesMut::new();
        encode_nop(&mut b);
        assert_eq!(server_decode(&b, INIT), Command::Nop);
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[.a-zA-Z0-9_-]{1,54}(#ephemeral)?"
    }

    proptest! {
        #[test]
        fn decode_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Decode until the decoder wants more or refuses; every step must consume or stop.
            for _ in 0..bytes.len() + 1 {
                match decode_frame(&mut buf, max) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn decode_command_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            state in 0u8..3,
            heartbeats in any::<bool>(),
        ) {
            let state = [ClientState::Init, ClientState::Subscribed, ClientState::Closing][usize::from(state)];
            let session = Session { state, heartbeats_enabled: heartbeats };
            let limits = CommandLimits { max_line_bytes: 64, max_msg_size: 32, max_body_size: 128, ..CommandLimits::default() };
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                match decode_command(&mut buf, &limits, session) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn command_shaped_bytes_never_panic(
            verb in prop::sample::select(vec!["IDENTIFY", "AUTH", "SUB", "PUB", "MPUB", "DPUB", "RDY", "FIN", "REQ", "TOUCH", "CLS", "NOP"]),
            args in "[ a-z0-9#!-]{0,40}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = format!("{verb}{args}\n").into_bytes();
            bytes.extend_from_slice(&tail);
            for session in [INIT, SUBSCRIBED, Session { state: ClientState::Closing, heartbeats_enabled: false }] {
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = decode_command(&mut buf, &CommandLimits::default(), session);
            }
        }

        #[test]
        fn frames_round_trip(frame_type in 0u32..3, data in proptest::collection::vec(any::<u8>(), 26..200), split in 0usize..240) {
            let whole = frame_bytes(frame_type, &data);
            let split = split.min(whole.len());
            let mut buf = BytesMut::from(&whole[..split]);
            let mut got = decode_frame(&mut buf, 1024).unwrap();
            if got.is_none() {
                buf.extend_from_slice(&whole[split..]);
                got = decode_frame(&mut buf, 1024).unwrap();
            }
            let mut again = BytesMut::new();
            match got.unwrap() {
                Frame::Response(d) => encode_frame(FRAME_TYPE_RESPONSE, &d, &mut again),
                Frame::Error(e) => encode_frame(FRAME_TYPE_ERROR, &e.text, &mut again),
                Frame::Message(m) => {
                    let mut d = BytesMut::new();
                    m.encode_data(&mut d);
                    encode_frame(FRAME_TYPE_MESSAGE, &d, &mut again);
                }
            }
            prop_assert_eq!(&again[..], &whole[..]);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn publishes_round_trip(
            topic in arb_name(),
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..8),
            delay in 0u32..3_600_000,
        ) {
            let limits = CommandLimits::default();
            let mut b = BytesMut::new();
            encode_pub(&topic, &bodies[0], &mut b).unwrap();
            encode_mpub(&topic, &bodies, &mut b).unwrap();
            encode_dpub(&topic, delay, &bodies[0], &mut b).unwrap();
            let whole = b.clone();
            // Fed byte by byte, the decoder waits and then yields the same three commands.
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for &byte in whole.iter() {
                buf.put_u8(byte);
                while let Some(cmd) = decode_command(&mut buf, &limits, INIT).unwrap() {
                    got.push(cmd);
                }
            }
            let first = Bytes::copy_from_slice(&bodies[0]);
            prop_assert_eq!(got, vec![
                Command::Pub { topic: topic.clone(), body: first.clone() },
                Command::Mpub { topic: topic.clone(), bodies: bodies.iter().map(|b| Bytes::copy_from_slice(b)).collect() },
                Command::Dpub { topic: topic.clone(), delay_ms: u64::from(delay), body: first },
            ]);
        }
    }
}
