//! What the agent will publish to NSQ for a router's log, made with the crate's own pipeline,
//! until `logmill replay --output nsq` (issue 8) exists: for each access line its three
//! compat points as `metrics::compat::CompatEncoder` writes them (tags app, status_code,
//! host, method; float `value`; `upstream_total` on `deis_router_response_time_ms`; a unique
//! ns timestamp), many lines per message. Also the old fluentd's shape of the same points
//! (no `method` tag, no `upstream_total`, no timestamp), and `logs` records.
//!
//! Include it with `#[path = "support/router_feed.rs"] mod router_feed;`.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use logmill::config::RawConfig;
use logmill::roles::replay::{collect, replay, FormatChoice, ReplayOptions};
use tokio_util::sync::CancellationToken;

/// The compat lines (`deis_router_*`, three per access line, in line order) that the pipeline
/// writes for `log` (a raw router log, or Docker/CRI wrapped), as node `host`'s agent.
pub fn compat_lines(log: &Path, host: &str) -> Vec<String> {
    let mut raw = RawConfig::load(None).expect("default config");
    raw.host = Some(host.to_owned());
    let settings = raw.validate().expect("valid config");
    let options = ReplayOptions {
        files: vec![log.to_owned()],
        format: FormatChoice::Auto,
        parser: "deis-router".into(),
    };
    let mut out = Vec::new();
    replay(&settings, &options, &CancellationToken::new(), collect(&mut out)).expect("replay");
    let text = String::from_utf8(out).expect("line protocol is UTF-8");
    // The rest are the pipeline's own router_requests, which the consumer makes itself.
    text.lines().filter(|l| l.starts_with("deis_router_")).map(str::to_owned).collect()
}

/// `lines` (three per access line) as message bodies of `per_message` access lines each.
pub fn messages(lines: &[String], per_message: usize) -> Vec<Bytes> {
    lines
        .chunks(3 * per_message)
        .map(|chunk| Bytes::from(chunk.iter().map(|l| format!("{l}\n")).collect::<String>()))
        .collect()
}

/// A compat line as the old fluentd sent it: no `method` tag, no `upstream_total`, no
/// timestamp (design.md, "What goes on NSQ").
pub fn old_fluentd_line(line: &str) -> String {
    let (key, rest) = line.split_once(' ').expect("key fields time");
    let (fields, _time) = rest.rsplit_once(' ').expect("fields time");
    let key: Vec<&str> = key.split(',').filter(|kv| !kv.starts_with("method=")).collect();
    let fields: Vec<&str> = fields.split(',').filter(|kv| !kv.starts_with("upstream_total=")).collect();
    format!("{} {}", key.join(","), fields.join(","))
}

/// A `logs` record as the old fluentd (and the agent) sends it.
pub fn log_record(app: &str, stream: &str, text: &str, time: &str, host: &str) -> Bytes {
    let record = serde_json::json!({
        "log": format!("{text}\n"),
        "stream": stream,
        "time": time,
        "docker": {"container_id": "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f"},
        "kubernetes": {
            "namespace_name": app,
            "pod_id": "34ebc234-2423-11e6-94aa-42010a800021",
            "pod_name": format!("{app}-v2-web-2ggow"),
            "container_name": format!("{app}-web"),
            "labels": {"app": app, "heritage": "deis", "type": "web", "version": "v2"},
            "host": host,
        },
        // The old fluentd's records carry more; a reader must not mind.
        "tag": format!("kubernetes.var.log.containers.{app}.log"),
    });
    Bytes::from(serde_json::to_vec(&record).expect("JSON"))
}
