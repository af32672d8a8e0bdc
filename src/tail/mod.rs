//! Reading log files: line splitting and container runtime formats. Pure: no I/O.

pub mod container;
pub mod lines;
