//! The agent's per-container decisions, pure: which files to read ([`filter`]) and what their
//! records are ([`classify`]): app and controller records for the `logs` topic, router lines
//! for points, or other records, dropped by default.

pub mod classify;
pub mod filter;
pub(crate) mod ship;
pub(crate) mod sink;
pub(crate) mod source;

/// Where the agent's collectors write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectTo {
    /// Line protocol on the `metrics` topic.
    Nsq,
    /// Straight to InfluxDB (`[influx]`).
    Influx,
    Off,
}

/// The validated `[agent]` settings: what is published, classification switches, filters and
/// declared sources.
#[derive(Debug, Clone)]
pub struct AgentRules {
    pub send_logs: bool,
    pub send_metrics: bool,
    pub collect: CollectTo,
    /// `/healthz` fails once a read has waited this long for NSQ.
    pub publish_stall: std::time::Duration,
    pub(crate) sources: source::Sources,
    /// Drop [`classify::Kind::Other`] records (the old plugin's behaviour) instead of shipping
    /// them to `logs`.
    pub drop_other: bool,
    /// Drop the router's non-access lines instead of shipping them to `logs`.
    pub drop_router_non_access_lines: bool,
    pub filters: filter::Filters,
}
