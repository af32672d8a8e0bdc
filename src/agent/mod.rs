//! The agent's per-container decisions, pure: which files to read ([`filter`]) and what their
//! records are ([`classify`]): app and controller records for the `logs` topic, router lines
//! for points, or other records, dropped by default.

pub mod classify;
pub mod filter;

/// The validated `[agent]` switches of classification and the include/exclude filters.
#[derive(Debug, Clone)]
pub struct AgentRules {
    /// Drop [`classify::Kind::Other`] records (the old plugin's behaviour) instead of shipping
    /// them to `logs`.
    pub drop_other: bool,
    /// Drop the router's non-access lines instead of shipping them to `logs`.
    pub drop_router_non_access_lines: bool,
    pub filters: filter::Filters,
}
