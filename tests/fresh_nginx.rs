//! Fresh nginx output: a real nginx (Debian package), configured with the Deis router's
//! `upstreaminfo` log format, serves a known mix of requests; replaying the access log it
//! wrote gives exactly the counts that were sent, per app and status.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use logmill::config::RawConfig;
use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};
use logmill::roles::replay::{collect, replay, FormatChoice, ReplayOptions};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx in the foreground with its own prefix, config, logs and pid file; killed on drop.
struct Nginx {
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, front: u16, upstream: u16, dead: u16) -> Nginx {
    let d = dir.display();
    // The Deis router's format (the design brief), one server block per app setting $app_name.
    let conf = format!(
        r#"
# One process, so that killing it leaves no worker behind.
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  log_format upstreaminfo '[$time_iso8601] - $app_name - $remote_addr - $remote_user - $status - "$request" - $bytes_sent - "$http_referer" - "$http_user_agent" - "$server_name" - $upstream_addr - $http_host - $upstream_response_time - $request_time';
  server {{
    listen 127.0.0.1:{front};
    server_name web.example.com;
    set $app_name web;
    access_log {d}/access.log upstreaminfo;
    location / {{ proxy_pass http://127.0.0.1:{upstream}; }}
    location /missing {{ return 404; }}
  }}
  server {{
    listen 127.0.0.1:{front};
    server_name dead.example.com;
    set $app_name dead;
    access_log {d}/access.log upstreaminfo;
    location / {{ proxy_pass http://127.0.0.1:{dead}; }}
  }}
  server {{
    listen 127.0.0.1:{front} default_server;
    server_name _;
    set $app_name router-default;
    access_log {d}/access.log upstreaminfo;
    location / {{ return 404; }}
  }}
  server {{
    listen 127.0.0.1:{upstream};
    access_log off;
    location / {{ return 200 "ok\n"; }}
    location /err {{ return 500; }}
  }}
}}
"#
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx not found: install the Debian package nginx-light, or run scripts/test which does");
    Nginx { child }
}

/// How long nginx may take to answer its first request; it needs milliseconds when idle, and
/// far more on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a request no plan line makes (`/__fence-NAME`, to the default server) and waits until
/// its access line is in the log; returns how many lines the log then has, the fence's last.
///
/// This is the signal that every earlier request is logged, not a guess at when the log has
/// settled: nginx (one process) writes a request's access line as it finishes it, before it
/// takes the next one, and the client sends one request at a time.
async fn fence(client: &reqwest::Client, url: &str, log: &Path, name: &str) -> usize {
    let path = format!("/__fence-{name}");
    let response = client.get(format!("{url}{path}")).header("Host", "fence.invalid").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404, "{path}");
    let logged_by = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if let Some(at) = lines.iter().position(|l| l.contains(&format!("\"GET {path} HTTP/1.1\""))) {
            assert_eq!(at + 1, lines.len(), "lines after the fence {path}:\n{text}");
            return lines.len();
        }
        assert!(Instant::now() < logged_by, "{path} not logged within {READY_TIMEOUT:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn int(p: &Point, k: &str) -> i64 {
    match p.field_value(k) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{k}: {other:?}"),
    }
}

#[tokio::test]
async fn replaying_fresh_nginx_output_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (front, upstream, dead) = (free_port(), free_port(), free_port());
    let _nginx = start_nginx(dir.path(), front, upstream, dead);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://127.0.0.1:{front}");
    let ready_by = Instant::now() + READY_TIMEOUT;
    while client.get(format!("{url}/")).send().await.is_err() {
        assert!(Instant::now() < ready_by, "nginx did not answer within {READY_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe above may have reached the default server a few times: count from a fence.
    let log = dir.path().join("access.log");
    let start = fence(&client, &url, &log, "start").await;

    // (host, method, path, how many, expected status)
    let plan: [(&str, reqwest::Method, &str, usize, u16); 6] = [
        ("web.example.com", reqwest::Method::GET, "/", 40, 200),
        ("web.example.com", reqwest::Method::POST, "/err", 15, 500),
        ("web.example.com", reqwest::Method::GET, "/missing?q=a%20b", 10, 404),
        // The user agent holds " - ", which broke the old split-based parser.
        ("web.example.com", reqwest::Method::PUT, "/", 5, 200),
        ("dead.example.com", reqwest::Method::GET, "/", 12, 502),
        ("unknown.example.com", reqwest::Method::DELETE, "/x", 8, 404),
    ];
    for (host, method, path, n, status) in &plan {
        for _ in 0..*n {
            let response = client
                .request(method.clone(), format!("{url}{path}"))
                .header("Host", *host)
                .header("User-Agent", "probe - with \"quotes\" - x")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), *status, "{host}{path}");
        }
    }
    // Everything between the two fences, and nothing else.
    let end = fence(&client, &url, &log, "end").await;
    let text = std::fs::read_to_string(&log).unwrap();
    let fresh: String = text.lines().skip(start).take(end - 1 - start).map(|l| format!("{l}\n")).collect();
    let fresh_log = dir.path().join("fresh.log");
    std::fs::write(&fresh_log, &fresh).unwrap();

    let mut raw = RawConfig::load(None).unwrap();
    raw.host = Some("node-1".into());
    let options =
        ReplayOptions { files: vec![fresh_log], format: FormatChoice::Auto, parser: "deis-router".into() };
    let mut out = Vec::new();
    let summary =
        replay(&raw.validate().unwrap(), &options, &CancellationToken::new(), collect(&mut out)).unwrap();
    let sent: usize = plan.iter().map(|p| p.3).sum();
    assert_eq!(summary.counts.access, sent as u64, "{fresh}");
    assert_eq!(summary.counts.rejected_total(), 0, "{fresh}");

    let points: Vec<Point> = parse_lines(&out).map(|(_, p)| p.unwrap()).collect();
    let mut expected: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for (host, method, _, n, status) in &plan {
        let app = match *host {
            "web.example.com" => "web",
            "dead.example.com" => "dead",
            _ => "router-default",
        };
        *expected.entry((app.into(), status.to_string(), method.to_string())).or_default() += *n as i64;
    }
    let mut counted: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut compat: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for p in &points {
        let key = || {
            let tag = |k| p.tag_value(k).unwrap().to_owned();
            (tag("app"), tag("status_code"), tag("method"))
        };
        match p.measurement.as_ref() {
            "router_requests" => *counted.entry(key()).or_default() += int(p, "count"),
            "deis_router_response_time_ms" => *compat.entry(key()).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(counted, expected);
    assert_eq!(compat, expected);
    // The dead upstream's 502s name an upstream and a time; the default server's 404s have `-`.
    let dead =
        points.iter().find(|p| p.measurement == "router_requests" && p.tag_value("app") == Some("dead"));
    assert!(dead.unwrap().field_value("upstream_time_sum").is_some());
    let default = points
        .iter()
        .find(|p| p.measurement == "router_requests" && p.tag_value("app") == Some("router-default"))
        .unwrap();
    assert!(default.field_value("upstream_time_sum").is_none(), "{default:?}");
}
