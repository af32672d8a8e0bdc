//! `tokio_util::codec` glue for a client connection: frames in, commands out. All the work
//! is in [`super::protocol`]; this only adapts it to `Framed`.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::protocol::{self, EncodeError, Frame, FrameError, IdentifyConfig, MessageId};

/// Decodes [`Frame`]s with a size limit; encodes [`Command`]s or pre-encoded bytes.
#[derive(Debug, Clone, Copy)]
pub struct NsqCodec {
    max_frame_bytes: usize,
}

impl NsqCodec {
    /// A codec refusing frames whose declared size is over `max_frame_bytes`
    /// (see [`protocol::decode_frame`]).
    pub fn new(max_frame_bytes: usize) -> Self {
        NsqCodec { max_frame_bytes }
    }
}

impl Default for NsqCodec {
    fn default() -> Self {
        NsqCodec::new(protocol::DEFAULT_MAX_FRAME_BYTES)
    }
}

/// Errors of the codec: the connection is unusable after any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The server sent bytes that are not a frame.
    #[error("bad frame from nsqd: {0}")]
    Frame(#[from] FrameError),
    /// A command could not be encoded.
    #[error("cannot encode command: {0}")]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A command a client sends, owned so it can travel through a channel to the connection task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The protocol magic, sent once first.
    Magic,
    /// IDENTIFY.
    Identify(IdentifyConfig),
    /// AUTH with a secret.
    Auth(Bytes),
    /// SUB.
    Sub {
        /// Topic.
        topic: String,
        /// Channel.
        channel: String,
    },
    /// PUB.
    Pub {
        /// Topic.
        topic: String,
        /// Message.
        body: Bytes,
    },
    /// MPUB.
    Mpub {
        /// Topic.
        topic: String,
        /// Messages.
        bodies: Vec<Bytes>,
    },
    /// DPUB.
    Dpub {
        /// Topic.
        topic: String,
        /// Delay.
        delay_ms: u32,
        /// Message.
        body: Bytes,
    },
    /// RDY.
    Rdy(u32),
    /// FIN.
    Fin(MessageId),
    /// REQ.
    Req {
        /// Message.
        id: MessageId,
        /// Delay.
        delay_ms: u32,
    },
    /// TOUCH.
    Touch(MessageId),
    /// CLS.
    Cls,
    /// NOP.
    Nop,
}

impl Command {
    /// Appends the command's bytes to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Command::Magic => buf.extend_from_slice(protocol::MAGIC_V2),
            Command::Identify(config) => protocol::encode_identify(config, buf)?,
            Command::Auth(secret) => protocol::encode_auth(secret, buf)?,
            Command::Sub { topic, channel } => protocol::encode_sub(topic, channel, buf)?,
            Command::Pub { topic, body } => protocol::encode_pub(topic, body, buf)?,
            Command::Mpub { topic, bodies } => protocol::encode_mpub(topic, bodies, buf)?,
            Command::Dpub { topic, delay_ms, body } => protocol::encode_dpub(topic, *delay_ms, body, buf)?,
            Command::Rdy(count) => protocol::encode_rdy(*count, buf),
            Command::Fin(id) => protocol::encode_fin(id, buf),
            Command::Req { id, delay_ms } => protocol::encode_req(id, *delay_ms, buf),
            Command::Touch(id) => protocol::encode_touch(id, buf),
            Command::Cls => protocol::encode_cls(buf),
            Command::Nop => protocol::encode_nop(buf),
        }
        Ok(())
    }
}

impl Decoder for NsqCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(protocol::decode_frame(src, self.max_frame_bytes)?)
    }
}

impl Encoder<Command> for NsqCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst)?)
    }
}

/// Bytes already encoded with the `protocol::encode_*` functions (a batch of pipelined
/// commands, say) go out as they are.
impl Encoder<Bytes> for NsqCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_encodes() {
        let mut codec = NsqCodec::new(64);
        let mut src = BytesMut::from(&b"\x00\x00\x00\x06\x00\x00\x00\x00OK\x00\x00"[..]);
        assert!(codec.decode(&mut src).unwrap().unwrap().is_ok());
        assert!(codec.decode(&mut src).unwrap().is_none());
        let mut src = BytesMut::from(&b"\x00\x01\x00\x00\x00\x00\x00\x00"[..]);
        assert!(matches!(codec.decode(&mut src), Err(CodecError::Frame(FrameError::TooLarge { .. }))));

        let mut dst = BytesMut::new();
        codec.encode(Command::Magic, &mut dst).unwrap();
        codec.encode(Command::Pub { topic: "t".into(), body: Bytes::from_static(b"x") }, &mut dst).unwrap();
        codec.encode(Bytes::from_static(b"NOP\n"), &mut dst).unwrap();
        assert_eq!(&dst[..], b"  V2PUB t\n\x00\x00\x00\x01xNOP\n");
        let err =
            codec.encode(Command::Pub { topic: "t t".into(), body: Bytes::from_static(b"x") }, &mut dst);
        assert!(matches!(err, Err(CodecError::Encode(EncodeError::InvalidTopic))));
    }
}
