//! The deployed path of the host points and the service's own counters: `logmill agent`
//! collecting (`agent.collect = "nsq"`) and reporting its `logmill_*` counters onto `metrics`
//! of a real nsqd, `logmill consume` writing them into a real influxd, where queries written
//! for Telegraf's schema read them back. Both processes end 0 on SIGTERM.

#[path = "support/influxd.rs"]
mod influxd;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use influxd::Influxd;
use support::nsqd::{skip, Nsqd, NsqdOptions};
use tokio::process::{Child, Command};

const DB: &str = "kubernetes";

fn spawn(args: &[&str], config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("LOGMILL_LOG", "warn")
        .env_remove("NODE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("logmill starts")
}

async fn sigterm_and_wait(mut child: Child, what: &str) {
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("ends").unwrap();
    assert!(status.success(), "{what} after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_host_points_and_counters_reach_influxdb_through_nsq() {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        skip("the_agents_host_points_and_counters_reach_influxdb_through_nsq", "nsqd");
        return;
    };
    let influxd = Influxd::start().await;
    influxd.create_database(DB).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            r#"host = "node-1"
[telemetry]
listen = ""
interval_secs = 1
[nsq]
nsqd_tcp_addresses = ["{nsqd}"]
[tail]
paths = ["{logs}/*.log"]
state_dir = "{state}"
[agent]
collect = "nsq"
[collect]
interval_ms = 1000
[kubernetes]
enabled = false
"#,
            nsqd = nsqd.tcp_addr(),
            logs = logs.display(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let consume_config = dir.path().join("consume.toml");
    std::fs::write(
        &consume_config,
        format!(
            r#"host = "consumer-host"
[telemetry]
listen = ""
interval_secs = 0
[nsq]
nsqd_tcp_addresses = ["{nsqd}"]
[influx]
urls = ["{influx}"]
database = "{DB}"
flush_interval_ms = 100
[consume]
instance = "c1"
"#,
            nsqd = nsqd.tcp_addr(),
            influx = influxd.url(),
        ),
    )
    .unwrap();
    let consume = spawn(&["consume"], &consume_config);
    let agent = spawn(&["agent"], &agent_config);

    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let cpu = influxd
            .scalar(
                DB,
                "SELECT count(\"usage_user\") FROM \"cpu\" WHERE \"cpu\"='cpu-total' AND \"host\"='node-1'",
            )
            .await;
        let counters = influxd
            .scalar(DB, "SELECT count(\"value\") FROM \"logmill_files_watched\" WHERE \"host\"='node-1'")
            .await;
        // A cycle's points may reach InfluxDB in more than one write (NSQ messages are
        // bounded, and the consumer flushes on its own clock), so wait for each measurement.
        let mem =
            influxd.scalar(DB, "SELECT count(\"used_percent\") FROM \"mem\" WHERE \"host\"='node-1'").await;
        let load =
            influxd.scalar(DB, "SELECT count(\"load1\") FROM \"system\" WHERE \"host\"='node-1'").await;
        if cpu >= 1.0 && counters >= 1.0 && mem >= 1.0 && load >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "in 60 s: cpu-total {cpu}, logmill_files_watched {counters}, mem {mem}, system {load} points"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Telegraf's queries over what came through NSQ.
    let usage =
        influxd.scalar(DB, "SELECT last(\"usage_idle\") FROM \"cpu\" WHERE \"cpu\"='cpu-total'").await;
    assert!((0.0..=100.0).contains(&usage), "usage_idle {usage}");
    let used = influxd.scalar(DB, "SELECT last(\"used_percent\") FROM \"mem\" WHERE \"host\"='node-1'").await;
    assert!(used > 0.0 && used < 100.0, "used_percent {used}");
    let n_cpus = influxd.scalar(DB, "SELECT last(\"n_cpus\") FROM \"system\" WHERE \"host\"='node-1'").await;
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpus = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    assert_eq!(n_cpus, cpus as f64, "system.n_cpus against /proc/stat's cpuN lines");

    sigterm_and_wait(agent, "the agent").await;
    sigterm_and_wait(consume, "the consumer").await;
}
