//! The last hop: InfluxDB's write API. [`api`] is the pure part (URLs, statements, what an
//! answer means); [`writer`] the handle and task that batch, send, retry and acknowledge.

pub mod api;
pub mod writer;
