//! NSQ, the queue between agents and consumers.
//!
//! Map of the submodules, from the pure bottom up:
//!
//! - [`protocol`]: the TCP protocol V2 as bytes and values, no I/O. Frames the server sends
//!   (`decode_frame`), commands a client sends (`encode_*` into a caller's buffer), error codes
//!   and which of them close the connection, topic/channel names. [`protocol::server`] is the
//!   other direction (decoding a client's commands the way nsqd v1.3.0 does), used by the test
//!   broker in `tests/support/`.
//! - [`codec`]: thin `tokio_util::codec` glue over [`protocol`] for a client connection.
//!
//! Connection, producer, consumer and lookupd discovery sit on top of these two.

pub mod codec;
pub mod protocol;
