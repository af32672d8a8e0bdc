//! `tokio_util::codec` glue: frames in, encoded commands out. All the work is in
//! [`super::protocol`]; this only adapts it to `Framed` for code that wants one. The client's
//! own connection (`super::connection`) calls the same pure functions directly, because its
//! pump reads and writes one socket in a single cancel-safe `select!`.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::protocol::{self, Frame, FrameError};

/// Decodes [`Frame`]s with a size limit; passes commands encoded with `protocol::encode_*`.
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
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Decoder for NsqCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(protocol::decode_frame(src, self.max_frame_bytes)?)
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

        let mut commands = BytesMut::new();
        protocol::encode_pub("t", b"x", &mut commands).unwrap();
        let mut dst = BytesMut::from(&protocol::MAGIC_V2[..]);
        codec.encode(commands.freeze(), &mut dst).unwrap();
        assert_eq!(&dst[..], b"  V2PUB t\n\x00\x00\x00\x01x");
    }
}
