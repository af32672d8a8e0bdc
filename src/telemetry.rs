//! The service's own counters: one registry, served as Prometheus text on `/metrics` (with
//! `/healthz`), and turned into points so they reach InfluxDB like Telegraf's `internal` input.
//!
//! Counters are `logmill_<noun>_<unit>_total`. Hot paths count into plain integers and add them
//! here once per batch, so an atomic add is never paid per line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::point::{FieldValue, Point};

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, Arc<AtomicU64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<AtomicU64>);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A value that goes up and down (queue depth, live series).
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// A check `/healthz` runs: `Err` says what is wrong.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The registry; clones share it.
#[derive(Clone, Default)]
pub struct Telemetry {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
    checks: Arc<Mutex<Vec<(&'static str, HealthCheck)>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Registers the counter `name{labels}` (or returns it, when already registered). Only
    /// the code that counts registers; readers use [`Telemetry::value`], which never creates.
    pub(crate) fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        Counter(self.register(name, help, Kind::Counter, labels))
    }

    pub(crate) fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        Gauge(self.register(name, help, Kind::Gauge, labels))
    }

    /// Adds a check to `/healthz`, which answers 503 with the reasons while any fails.
    pub fn health_check(&self, name: &'static str, check: HealthCheck) {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).push((name, check));
    }

    /// Every check's verdict: `Ok`, or what failed, one line each.
    pub fn health(&self) -> Result<(), String> {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failed: Vec<String> = checks
            .iter()
            .filter_map(|(name, check)| check().err().map(|why| format!("{name}: {why}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("\n"))
        }
    }

    /// The current value of a registered counter or gauge; `None` when nothing registered
    /// `name{labels}`, so that a misspelt name is an error rather than a silent zero.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.get(name)?;
        let (_, value) = family.series.iter().find(|(l, _)| {
            l.len() == labels.len() && l.iter().zip(labels).all(|((k, v), (k2, v2))| k == k2 && v == v2)
        })?;
        Some(value.load(Ordering::Relaxed))
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> Arc<AtomicU64> {
        // Every family is documented where it is counted; an empty help is a reader that
        // meant `value`.
        debug_assert!(!help.is_empty(), "{name} registered without help text");
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        // A poisoned lock only means another thread panicked mid-registration; the map is
        // still consistent (inserts are single operations), so keep serving it.
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family { help, kind, series: BTreeMap::new() });
        debug_assert!(family.kind == kind, "{name} registered as both a counter and a gauge");
        family.series.entry(labels).or_default().clone()
    }

    /// Every series in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                        let _ = write!(out, "{k}=\"{v}\"");
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", value.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// Every series as a point: measurement = metric name, tags = labels plus `host`, field
    /// `value` (integer), stamped `now_ns`.
    pub fn points(&self, host: &str, now_ns: i64) -> Vec<Point> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut points = Vec::new();
        for (name, family) in families.iter() {
            for (labels, value) in &family.series {
                let mut p = Point::new(*name);
                for (k, v) in labels {
                    p.tags.push(((*k).into(), v.clone().into()));
                }
                p.tags.push(("host".into(), host.to_owned().into()));
                let v = value.load(Ordering::Relaxed).min(i64::MAX as u64) as i64;
                points.push(p.field("value", FieldValue::Int(v)).timestamp(now_ns));
            }
        }
        points
    }
}

/// Serves `GET /metrics` and `GET /healthz` until `cancel` fires.
///
/// A few lines of HTTP/1.0 by hand rather than an HTTP server crate: two fixed routes read by
/// Prometheus and a kubelet probe do not justify the dependency.
pub async fn serve(listener: TcpListener, telemetry: Telemetry, cancel: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "telemetry accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = &buf[..n];
            let (status, content_type, body) = if request.starts_with(b"GET /metrics ") {
                ("200 OK", "text/plain; version=0.0.4", telemetry.render_prometheus())
            } else if request.starts_with(b"GET /healthz ") {
                match telemetry.health() {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                }
            } else {
                ("404 Not Found", "text/plain", "not found\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let t = Telemetry::default();
        t.counter("logmill_lines_read_total", "Lines read.", &[]).add(3);
        let c = t.counter("logmill_lines_rejected_total", "Lines rejected.", &[("reason", "too_long")]);
        c.add(2);
        // The same name and labels give the same counter.
        t.counter("logmill_lines_rejected_total", "Lines rejected.", &[("reason", "too_long")]).add(1);
        t.gauge("logmill_series_live", "Live series.", &[]).set(7);
        assert_eq!(
            t.render_prometheus(),
            "# HELP logmill_lines_read_total Lines read.\n# TYPE logmill_lines_read_total counter\nlogmill_lines_read_total 3\n\
             # HELP logmill_lines_rejected_total Lines rejected.\n# TYPE logmill_lines_rejected_total counter\nlogmill_lines_rejected_total{reason=\"too_long\"} 3\n\
             # HELP logmill_series_live Live series.\n# TYPE logmill_series_live gauge\nlogmill_series_live 7\n"
        );
        assert_eq!(t.value("logmill_lines_rejected_total", &[("reason", "too_long")]), Some(3));
        assert_eq!(t.value("logmill_series_live", &[]), Some(7));
        // Reading never creates: a misspelt name or label is no series at all.
        assert_eq!(t.value("logmill_lines_rejectd_total", &[("reason", "too_long")]), None);
        assert_eq!(t.value("logmill_lines_rejected_total", &[("reason", "bad_time")]), None);
        assert_eq!(t.value("logmill_lines_rejected_total", &[]), None);
        assert!(!t.render_prometheus().contains("rejectd"));
        let points = t.points("n1", 5);
        assert_eq!(points.len(), 3);
        assert_eq!(points[1].measurement, "logmill_lines_rejected_total");
        assert_eq!(points[1].tag_value("reason"), Some("too_long"));
        assert_eq!(points[1].tag_value("host"), Some("n1"));
        assert_eq!(points[1].field_value("value"), Some(&FieldValue::Int(3)));
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz() {
        let t = Telemetry::default();
        t.counter("logmill_lines_read_total", "Lines read.", &[]).add(42);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, t.clone(), cancel.clone()));
        for (path, want_status, want_body) in [
            ("/metrics", "200", "logmill_lines_read_total 42"),
            ("/healthz", "200", "ok"),
            ("/nope", "404", "not found"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut response = String::new();
            s.read_to_string(&mut response).await.unwrap();
            assert!(response.starts_with(&format!("HTTP/1.1 {want_status}")), "{response}");
            assert!(response.contains(want_body), "{response}");
        }
        // A failing check turns /healthz into a 503 that says why.
        t.health_check("publishing", Arc::new(|| Err("stuck for 90 s".into())));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("publishing: stuck for 90 s"), "{response}");
        cancel.cancel();
        server.await.unwrap();
    }
}
