//! The agent's per-container decisions, pure: which files to read ([`filter`]) and what their
//! records are ([`classify`]): app and controller records for the `logs` topic, router lines
//! for points, or other records, dropped by default.

pub mod classify;
pub mod filter;
