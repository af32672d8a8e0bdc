//! The consumer's tasks: messages held while their windows are open, TOUCHed before they time
//! out, acknowledged from InfluxDB's outcomes.
//!
//! - [`ledger`]: which held message waits for which submission and window generation, and
//!   the decisions (finish, requeue) that follow. Pure.

pub mod core;
pub(crate) mod ledger;
pub(crate) mod memory;
pub mod source;
pub mod submit;

pub use self::core::{start, Ack, CoreSettings, CoreSummary, Inbound, OneshotAck, Settled};
pub use ledger::HoldLimits;
pub use submit::DeadLetterSink;
