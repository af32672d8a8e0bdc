//! logmill turns a Kubernetes (Deis Workflow / Hephy) cluster's logs into metrics.
//!
//! Module map. Pure modules (no I/O, no tokio) sit at the bottom; roles wire them to files,
//! sockets and the clock. Dependencies point inward: nothing pure imports a module above it.
//!
//! - [`timefmt`]: the timestamps logs carry (RFC 3339, nginx `$time_local`) to Unix ns. Pure.
//! - [`access`]: access lines and their point keys ([`access::LineOrigin`],
//!   [`access::KeyGuard`]). [`access::router`] is the `nom` fast path for the Deis router
//!   format; [`access::rules`] runs the declarative definitions of `parsers/*.toml`. Pure.
//! - [`metrics`]: points. [`metrics::point`] the owned point, [`metrics::line_protocol`] the
//!   InfluxDB line protocol encoder and parser, [`metrics::compat`] the three points per access
//!   line of the old fluentd plugin, [`metrics::aggregate`] `router_requests` windows,
//!   [`metrics::sketch`] the percentile sketch. Pure.
//! - [`tail`]: reading log files. [`tail::lines`] splits a byte stream into capped lines with
//!   offsets; [`tail::container`] decodes Docker json-file and CRI lines; [`tail::decoder`] is
//!   one file's decoding (format pick, reassembly, line cap, origin) with the resume point a
//!   checkpoint records. Pure.
//! - [`pipeline`]: the per-line path every role shares (classify, compat points, aggregate).
//! - [`mod@derive`]: what a consumer derives from one NSQ message (`metrics` line protocol
//!   validated, stamped and passed through; `deis_router_*` points and router lines in `logs`
//!   as `router_requests` samples; `app_log_lines` counts, levels). Pure.
//! - [`influx`]: the InfluxDB writer. [`influx::api`] (pure) builds requests and classifies
//!   answers; [`influx::writer`] batches, gzips, retries, fails over and acknowledges.
//! - [`nsq`]: NSQ. [`nsq::protocol`] frames, commands, error codes and names (pure);
//!   [`nsq::connection`], [`nsq::producer`], [`nsq::consumer`] the client, [`nsq::lookupd`]
//!   discovery, [`nsq::http`] nsqd's HTTP API; [`nsq::NsqSettings`] the validated settings.
//! - [`consume`]: the consumer's tasks: a processing core independent of the source (NSQ
//!   deliveries, or an in-memory queue) that holds messages while their windows are open,
//!   touches them, and finishes or requeues them from InfluxDB's outcomes ([`consume::core`]);
//!   the pure bookkeeping behind it (`consume::ledger`); the output task
//!   ([`consume::submit`]); NSQ as a source ([`consume::source`]).
//! - [`output`]: the one output boundary, `submit(body, points)` → each submission's
//!   [`output::Outcome`] (stdout, InfluxDB, an NSQ topic).
//! - [`backoff`]: capped exponential backoff with jitter, and the one jitter source. Pure.
//! - `errors`: the one error-chain formatter.
//! - [`config`]: TOML file + the old stack's environment → validated [`config::Settings`].
//! - [`telemetry`]: the service's own `logmill_*` counters, Prometheus `/metrics`, `/healthz`,
//!   and the same counters as points.
//! - [`shutdown`]: cancellation token, task tracker, drain order.
//! - [`roles`]: the commands, wiring only ([`roles::replay`], [`roles::consume`],
//!   [`roles::inspect`]).
//!
//! These docs are for logmill's developers: build them with `cargo doc --document-private-items`
//! (links to private items are intended).
#![allow(rustdoc::private_intra_doc_links)]

pub mod access;
pub mod backoff;
pub mod config;
pub mod consume;
pub mod derive;
mod errors;
pub mod influx;
pub mod metrics;
pub mod nsq;
pub mod output;
pub mod pipeline;
pub mod roles;
pub mod shutdown;
pub mod tail;
pub mod telemetry;
pub mod timefmt;
