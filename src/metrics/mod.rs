//! Points and what produces them. Pure: no I/O.

pub mod aggregate;
pub mod compat;
pub mod line_protocol;
pub mod log_volume;
pub mod point;
pub mod sketch;
pub(crate) mod window;
