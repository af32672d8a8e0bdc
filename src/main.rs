//! The `logmill` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use logmill::config::RawConfig;
use logmill::roles::agent;
use logmill::roles::replay::{self, AsContainer, Destination, FormatChoice, ReplayOptions, ReplayOutput};
use logmill::roles::run::{self as run_role, RunOptions};
use logmill::roles::{collect, consume, inspect};

/// logmill turns a Kubernetes (Deis Workflow / Hephy) cluster's logs into metrics.
///
/// On every node `logmill agent` follows the container logs and publishes them to NSQ (app
/// logs to `logs` as the old fluentd's JSON, Deis router access lines as the
/// deis_router_* points to `metrics`) with Telegraf's host collectors beside it; `logmill
/// consume` writes NSQ to InfluxDB with the router_requests and app_log_lines aggregates.
/// `logmill run` is both in one process with no server; `replay` and `collect` run parts alone.
///
/// Settings come from the TOML file given with --config (every key documented in the README),
/// then from the old stack's environment variables (NSQ_LOG_TOPIC, NSQ_METRIC_TOPIC,
/// DEIS_NSQD_ADDRS, DEIS_NSQD_SERVICE_HOST, INFLUXDB_URLS, NODE_NAME…), then from flags.
#[derive(Debug, Parser)]
#[command(name = "logmill", version, max_term_width = 100)]
struct Cli {
    /// Configuration file (TOML). Without it, the documented defaults.
    #[arg(long, short, global = true, env = "LOGMILL_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter for logmill's own diagnostics on stderr (e.g. `info`, `logmill=debug`).
    #[arg(long, global = true, env = "LOGMILL_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node agent (a DaemonSet): follow every container log on this node, classify and
    /// enrich each record, and publish it to NSQ at least once (app logs to `logs`, router
    /// access points to `metrics`), with the host collectors beside it, until SIGTERM.
    ///
    /// Checkpoints move only after nsqd acknowledged what was read; SIGTERM stops reading,
    /// waits for the last acknowledgements, writes the checkpoint and exits 0.
    Agent {
        /// Path globs of the files to follow [default: `tail.paths`, /var/log/containers/*.log].
        #[arg(long, num_args = 1..)]
        paths: Vec<String>,
        /// Where the checkpoints live [default: `tail.state_dir`, /var/lib/logmill].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// nsqd TCP address (repeat for several) [default: `nsq.nsqd_tcp_addresses`,
        /// $DEIS_NSQD_ADDRS, $NSQD_TCP_ADDRESSES, 127.0.0.1:4150].
        #[arg(long)]
        nsqd: Vec<String>,
        /// This node's name, the `host` tag [default: `host`, $NODE_NAME, the host name].
        #[arg(long)]
        node: Option<String>,
        /// Address of /metrics and /healthz [default: `telemetry.listen`, 0.0.0.0:9273].
        #[arg(long)]
        listen: Option<String>,
    },
    /// Push finished log files through the same code as the agent and write both point families
    /// as line protocol to stdout (or InfluxDB with --output influx); a summary goes to stderr.
    /// With --output nsq, publish them to NSQ as the agent would (app records to `logs`,
    /// router points to `metrics`), as the container named by the file or the flags.
    ///
    /// Files are read once to their end, in the order given (one router's log and its rotations,
    /// oldest first). Docker json-file and CRI wrapping is decoded and partial lines are joined.
    /// Every open window is flushed at the end.
    Replay {
        /// How lines are wrapped: `auto` decides per file from its first line.
        #[arg(long, value_enum, default_value = "auto")]
        format: FormatChoice,
        /// Node name for the `host` tag [default: `host` of the config, $NODE_NAME, or this
        /// machine's host name].
        #[arg(long)]
        host: Option<String>,
        /// `router_requests` window length, seconds [default: `aggregate.window_secs`, 10].
        #[arg(long)]
        window: Option<u64>,
        /// The log-format definition to parse lines with (`logmill parsers` lists them).
        #[arg(long, default_value = "deis-router")]
        parser: String,
        /// A directory of extra `*.toml` log-format definitions [default: `parsers.dir`].
        #[arg(long)]
        parsers_dir: Option<PathBuf>,
        /// Where the points go: line protocol on stdout, InfluxDB (the `[influx]` settings, or
        /// the --influx-* flags), or NSQ (`[nsq]`, or --nsqd). With `influx` or `nsq`, exits 1
        /// unless everything was acknowledged.
        #[arg(long, value_enum, default_value = "stdout")]
        output: ReplayOutput,
        /// With --output nsq: nsqd TCP address (repeat for several) [default:
        /// `nsq.nsqd_tcp_addresses`, $DEIS_NSQD_ADDRS, $NSQD_TCP_ADDRESSES].
        #[arg(long)]
        nsqd: Vec<String>,
        /// With --output nsq: the namespace the files' records come from (with --pod and
        /// --container) [default: from each file's name, kubelet's
        /// `<pod>_<namespace>_<container>-<id>.log`].
        #[arg(long)]
        namespace: Option<String>,
        /// With --output nsq: the pod.
        #[arg(long)]
        pod: Option<String>,
        /// With --output nsq: the container (`deis-router` for router access lines).
        #[arg(long)]
        container: Option<String>,
        /// InfluxDB base URL (repeat for failover) [default: `influx.urls`, $INFLUXDB_URLS].
        #[arg(long = "influx-url")]
        influx_urls: Vec<String>,
        /// InfluxDB 1.x database [default: `influx.database`, kubernetes].
        #[arg(long)]
        influx_db: Option<String>,
        /// InfluxDB 1.x retention policy [default: the database's default].
        #[arg(long)]
        influx_rp: Option<String>,
        /// InfluxDB user; the password comes from $INFLUXDB_PASSWORD or `influx.password_file`,
        /// never from the command line.
        #[arg(long)]
        influx_user: Option<String>,
        /// Log files to replay.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the host, kubelet and nsqd collectors alone (Telegraf's cpu, mem, swap, disk, diskio,
    /// net, netstat, system, processes, kernel, kubernetes and nsq series) and write their line
    /// protocol to stdout (or InfluxDB with --output influx), every `collect.interval_ms` on the
    /// clock until stopped.
    ///
    /// With --once: one cycle (cpu and diskio sampled twice, `collect.once_sample_gap_ms` apart,
    /// so every measurement is there), problems on stderr; exits 1 when an enabled input gave
    /// no points or InfluxDB did not take them all.
    Collect {
        /// One cycle, then exit.
        #[arg(long)]
        once: bool,
        /// Where the points go: line protocol on stdout, or InfluxDB (the `[influx]` settings,
        /// or the --influx-* flags).
        #[arg(long, value_enum, default_value = "stdout")]
        output: Destination,
        /// Node name for the `host` tag [default: `host` of the config, $NODE_NAME, or this
        /// machine's host name].
        #[arg(long)]
        host: Option<String>,
        /// InfluxDB base URL (repeat for failover) [default: `influx.urls`, $INFLUXDB_URLS].
        #[arg(long = "influx-url")]
        influx_urls: Vec<String>,
        /// InfluxDB 1.x database [default: `influx.database`, kubernetes].
        #[arg(long)]
        influx_db: Option<String>,
    },
    /// The agent and the consumer in one process, with no server: follow the files of
    /// `tail.paths`, derive what `consume` would (compat points, `router_requests`,
    /// `app_log_lines`), and write line protocol to stdout (or InfluxDB with --output influx).
    ///
    /// An in-memory queue stands in for NSQ. With --once, every file is read from its start
    /// (checkpoints in a temporary directory) and the run ends at the end of the files, once
    /// everything is written; `testdata/run.toml` tails the repository's test data.
    Run {
        /// Stop at the end of the files.
        #[arg(long)]
        once: bool,
        /// Path globs of the files to follow [default: `tail.paths`].
        #[arg(long, num_args = 1..)]
        paths: Vec<String>,
        /// Where the points go: line protocol on stdout, or InfluxDB (the `[influx]` settings,
        /// or the --influx-* flags).
        #[arg(long, value_enum, default_value = "stdout")]
        output: Destination,
        /// InfluxDB base URL (repeat for failover) [default: `influx.urls`, $INFLUXDB_URLS].
        #[arg(long = "influx-url")]
        influx_urls: Vec<String>,
        /// InfluxDB 1.x database [default: `influx.database`, kubernetes].
        #[arg(long)]
        influx_db: Option<String>,
    },
    /// Consume NSQ `metrics` and `logs` into InfluxDB: pass line protocol through (stamping
    /// points that have no time with their message's), aggregate `deis_router_*` points into
    /// `router_requests` and log records into `app_log_lines`, dead-letter what is invalid.
    ///
    /// A message is finished only once everything derived from it is stored; messages stay in
    /// flight (touched) while their window is open. SIGTERM stops reading, flushes, waits for
    /// InfluxDB and exits 0.
    Consume {
        /// nsqd TCP address to consume from (repeat; combines with --lookupd)
        /// [default: `nsq.nsqd_tcp_addresses`, $NSQD_TCP_ADDRESSES, $DEIS_NSQD_ADDRS].
        #[arg(long = "nsqd", value_name = "HOST:PORT")]
        nsqd: Vec<String>,
        /// nsqlookupd HTTP address to discover nsqd from (repeat)
        /// [default: `nsq.lookupd_http_addresses`, $NSQLOOKUPD_HTTP_ADDRESSES]. Without --nsqd,
        /// discovery alone.
        #[arg(long = "lookupd", value_name = "HOST:PORT")]
        lookupd: Vec<String>,
        /// Channel on both topics [default: `nsq.channel`, logmill]; never `consume` (the Deis
        /// logger's) nor `consumer` (telegraf's).
        #[arg(long)]
        channel: Option<String>,
        /// InfluxDB base URL (repeat for failover) [default: `influx.urls`, $INFLUXDB_URLS].
        #[arg(long = "influx-url")]
        influx_urls: Vec<String>,
        /// InfluxDB 1.x database [default: `influx.database`, kubernetes].
        #[arg(long)]
        influx_db: Option<String>,
        /// This replica's name, the `consumer` tag of its aggregates; must differ between
        /// replicas [default: `consume.instance`, this machine's host name].
        #[arg(long)]
        instance: Option<String>,
        /// Address of /metrics and /healthz [default: `telemetry.listen`, 0.0.0.0:9273].
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a configuration (file, environment) and print the effective settings.
    CheckConfig {
        /// The file to check [default: --config].
        file: Option<PathBuf>,
    },
    /// List the log-format definitions in force (built-ins and `parsers.dir`).
    Parsers {
        /// A directory of extra `*.toml` definitions [default: `parsers.dir`].
        #[arg(long)]
        parsers_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("logmill: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<RawConfig> {
    let mut raw = RawConfig::load(path.map(PathBuf::as_path))?;
    raw.apply_env(|k| std::env::var(k).ok())?;
    Ok(raw)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent { paths, state_dir, nsqd, node, listen } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if !paths.is_empty() {
                raw.tail.paths = paths;
            }
            if let Some(dir) = state_dir {
                raw.tail.state_dir = dir;
            }
            if !nsqd.is_empty() {
                raw.nsq.nsqd_tcp_addresses = nsqd;
            }
            if node.is_some() {
                raw.host = node;
            }
            if let Some(listen) = listen {
                raw.telemetry.listen = listen;
            }
            let settings = raw.validate().context("invalid settings")?;
            agent::run(settings)
        }
        Command::Replay {
            format,
            host,
            window,
            parser,
            parsers_dir,
            output,
            nsqd,
            namespace,
            pod,
            container,
            influx_urls,
            influx_db,
            influx_rp,
            influx_user,
            files,
        } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if host.is_some() {
                raw.host = host;
            }
            if let Some(w) = window {
                raw.aggregate.window_secs = w;
            }
            if parsers_dir.is_some() {
                raw.parsers.dir = parsers_dir;
            }
            if !influx_urls.is_empty() {
                raw.influx.urls = influx_urls;
            }
            if let Some(db) = influx_db {
                raw.influx.database = db;
            }
            if let Some(rp) = influx_rp {
                raw.influx.retention_policy = rp;
            }
            if let Some(user) = influx_user {
                raw.influx.username = user;
            }
            if !nsqd.is_empty() {
                raw.nsq.nsqd_tcp_addresses = nsqd;
            }
            let settings = raw.validate().context("invalid settings")?;
            let options = ReplayOptions { files, format, parser };
            match output {
                ReplayOutput::Stdout => replay::run(settings, options, Destination::Stdout),
                ReplayOutput::Influx => replay::run(settings, options, Destination::Influx),
                ReplayOutput::Nsq => {
                    replay::to_nsq(settings, options, AsContainer { namespace, pod, container })
                }
            }
        }
        Command::Collect { once, output, host, influx_urls, influx_db } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if host.is_some() {
                raw.host = host;
            }
            if !influx_urls.is_empty() {
                raw.influx.urls = influx_urls;
            }
            if let Some(db) = influx_db {
                raw.influx.database = db;
            }
            let settings = raw.validate().context("invalid settings")?;
            collect::run(settings, collect::CollectOptions { once }, output)
        }
        Command::Run { once, paths, output, influx_urls, influx_db } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if !paths.is_empty() {
                raw.tail.paths = paths;
            }
            if !influx_urls.is_empty() {
                raw.influx.urls = influx_urls;
            }
            if let Some(db) = influx_db {
                raw.influx.database = db;
            }
            let settings = raw.validate().context("invalid settings")?;
            run_role::run(settings, RunOptions { once, output })
        }
        Command::Consume { nsqd, lookupd, channel, influx_urls, influx_db, instance, listen } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if !lookupd.is_empty() {
                raw.nsq.lookupd_http_addresses = lookupd;
                if nsqd.is_empty() {
                    // Discovery was asked for on the command line: no default nsqd besides.
                    raw.nsq.nsqd_tcp_addresses.clear();
                }
            }
            if !nsqd.is_empty() {
                raw.nsq.nsqd_tcp_addresses = nsqd;
            }
            if let Some(channel) = channel {
                raw.nsq.channel = channel;
            }
            if !influx_urls.is_empty() {
                raw.influx.urls = influx_urls;
            }
            if let Some(db) = influx_db {
                raw.influx.database = db;
            }
            if instance.is_some() {
                raw.consume.instance = instance;
            }
            if let Some(listen) = listen {
                raw.telemetry.listen = listen;
            }
            let settings = raw.validate().context("invalid settings")?;
            consume::run(settings)
        }
        Command::CheckConfig { file } => {
            let raw = load_config(file.as_ref().or(cli.config.as_ref()))?;
            let settings = raw.validate().context("invalid settings")?;
            Ok(inspect::check_config(&raw, &settings))
        }
        Command::Parsers { parsers_dir } => {
            let mut raw = load_config(cli.config.as_ref())?;
            if parsers_dir.is_some() {
                raw.parsers.dir = parsers_dir;
            }
            let settings = raw.validate().context("invalid settings")?;
            Ok(inspect::parsers(&settings))
        }
    }
}
