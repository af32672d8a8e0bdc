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
//! - [`tail`]: reading log files. Pure: [`tail::lines`] splits a byte stream into capped lines
//!   with offsets; [`tail::container`] decodes Docker json-file and CRI lines; [`tail::decoder`]
//!   is one file's decoding (format pick, reassembly, line cap, origin) with the resume point a
//!   checkpoint records; [`tail::multiline`] joins the lines of a stack trace into one record,
//!   keeping that resume point; `tail::identity`, `tail::checkpoint`, `tail::fluentd`,
//!   `tail::discover`, `tail::schedule` the engine's decisions. I/O: [`tail::Tailer`] follows
//!   every file of a node through rotation, truncation and restarts, checkpointing only what
//!   its [`tail::RecordSink`] acknowledged (`tail::engine`, `tail::watch`).
//! - [`kube`]: which container a file belongs to ([`kube::names`], from its path) and its pod's
//!   labels and uid from the Kubernetes API ([`kube::PodMetadata`]: an LRU cache with TTLs in
//!   front of background fetches; a lookup never blocks).
//! - [`agent`]: the agent's per-container decisions: include/exclude filters
//!   ([`agent::filter`]) and the old fluentd plugin's classification ([`agent::classify`]),
//!   pure; which container a file is (`agent::source`), what its records become on NSQ
//!   (`agent::ship`, pure), and the engine's sink that publishes them and hands back
//!   acknowledged marks (`agent::sink`).
//! - [`wire`]: the `logs` topic's JSON, exactly as the old fluentd plugin sent it, and its
//!   reader for the consumer ([`wire::log_record`]). Pure.
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
//!   ([`consume::submit`]); NSQ as a source ([`consume::source`]), or `logmill run`'s
//!   in-memory queue (`consume::memory`).
//! - [`output`]: the one output boundary, `submit(body, points)` → each submission's
//!   [`output::Outcome`] (stdout, InfluxDB, an NSQ topic).
//! - [`host`]: host and kubelet collectors with Telegraf's series names and types: pure
//!   parsers of `/proc`, `/sys` and the kubelet's and nsqd's JSON, the inputs that read them,
//!   and the runner that collects on the clock into batches of line protocol.
//! - [`backoff`]: capped exponential backoff with jitter, and the one jitter source. Pure.
//! - `errors`: the one error-chain formatter.
//! - `glob`: the one glob matcher (`*`, `?`, `[…]`), for names, sources and path components.
//! - `heap`: freed heap memory handed back to the kernel after a burst (glibc keeps it).
//! - [`config`]: TOML file + the old stack's environment → validated [`config::Settings`].
//! - [`telemetry`]: the service's own `logmill_*` counters, Prometheus `/metrics`, `/healthz`,
//!   and the same counters as points.
//! - [`shutdown`]: cancellation token, task tracker, drain order.
//! - [`roles`]: the commands, wiring only ([`roles::agent`], [`roles::consume`],
//!   [`roles::run`], [`roles::collect`], [`roles::replay`], [`roles::inspect`]).
//!
//! These docs are for logmill's developers: build them with `cargo doc --document-private-items`
//! (links to private items are intended).
#![allow(rustdoc::private_intra_doc_links)]

pub mod access;
pub mod agent;
pub mod backoff;
pub mod config;
pub mod consume;
pub mod derive;
mod errors;
mod glob;
mod heap;
pub mod host;
pub mod influx;
pub mod kube;
pub mod metrics;
pub mod nsq;
pub mod output;
pub mod pipeline;
pub mod roles;
pub mod shutdown;
pub mod tail;
pub mod telemetry;
pub mod timefmt;
pub mod wire;
