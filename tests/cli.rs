//! The binary as a user runs it: help, config errors, replay's output and summary, and bad
//! input that must end in counted outcomes, never a panic.

use std::io::Write;
use std::process::{Command, Output};

fn logmill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(args)
        .env_remove("LOGMILL_CONFIG")
        .env_remove("NSQ_LOG_TOPIC")
        .output()
        .expect("run logmill")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_names_the_commands() {
    let out = logmill(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["replay", "check-config", "parsers", "--config"] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
    let out = logmill(&["--version"]);
    assert_eq!(text(&out.stdout).trim(), format!("logmill {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_prints_effective_settings_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "host = \"node-9\"\n[aggregate]\nwindow_secs = 30\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["check-config", good.to_str().unwrap()])
        .env("NSQ_LOG_TOPIC", "applogs")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("window_secs = 30"), "{shown}");
    assert!(shown.contains("log_topic = \"applogs\""), "the environment applies: {shown}");
    assert!(shown.contains("effective host: node-9"), "{shown}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[aggregate]\nwindow = 30\n").unwrap();
    let out = logmill(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("window"), "{err}");

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[aggregate]\nmax_series = 0\n").unwrap();
    let out = logmill(&["check-config", invalid.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("aggregate.max_series"), "{}", text(&out.stderr));
}

#[test]
fn replay_writes_points_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(
        &log,
        concat!(
            "[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - \"GET / HTTP/1.1\" - 211 - \"-\" - \"curl/7.43.0\" - \"foo.example.com\" - 10.2.3.4:5000 - foo.example.com - 0.002 - 0.046\n",
            "2016/05/31 16:56:13 [error] 7#7: *1 connect() failed\n",
        ),
    )
    .unwrap();
    let out = logmill(&["replay", "--host", "node-1", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lp = text(&out.stdout);
    // The first line sits at offset 0, so its key is the access second itself.
    assert!(lp.starts_with(
        "deis_router_request_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.046 1464713772000000000\n"
    ), "{lp}");
    assert!(lp.contains("router_requests,app=foo,status_code=200,method=GET,host=node-1,consumer=local count=1i,bytes_sent=211i,"), "{lp}");
    let summary = text(&out.stderr);
    assert!(summary.contains("access lines      1"), "{summary}");
    assert!(summary.contains("other lines       1"), "{summary}");
}

#[test]
fn bad_input_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.log");
    let mut f = std::fs::File::create(&log).unwrap();
    let good = b"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - \"GET /fast HTTP/1.1\" - 169 - \"-\" - \"curl\" - \"web.example.com\" - 127.0.0.1:19001 - web.example.com - 0.000 - 0.000\n";
    f.write_all(good).unwrap();
    // Garbage bytes and invalid UTF-8 that are not access lines.
    f.write_all(b"\x00\xff\xfe garbage \xc3\x28\n").unwrap();
    // An access line with invalid UTF-8 in the app name.
    f.write_all(b"[2026-11-21T04:22:21+00:00] - w\xe9b - 127.0.0.1 - - - 200 - \"GET / HTTP/1.1\" - 19 - \"-\" - \"c\" - \"w\" - - - w - - - 0.1\n").unwrap();
    // A truncated access line.
    f.write_all(&good[..80]).unwrap();
    f.write_all(b"\n").unwrap();
    // A 2 MiB access line: over the 1 MiB default cap.
    let mut long = good[..70].to_vec();
    long.resize(2 << 20, b'a');
    long.push(b'\n');
    f.write_all(&long).unwrap();
    // The line after it is intact.
    f.write_all(good).unwrap();
    drop(f);
    let out = logmill(&["replay", "--host", "n", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stderr);
    assert!(summary.contains("access lines      2"), "{summary}");
    assert!(summary.contains("other lines       1"), "{summary}");
    assert!(summary.contains("rejected          3 (too_long 1, truncated 1, invalid_utf8 1)"), "{summary}");
    assert!(summary.contains("truncated lines   1"), "{summary}");
    assert_eq!(text(&out.stdout).matches("deis_router_bytes_sent,").count(), 2);
}

#[test]
fn unknown_parser_and_missing_file_are_clear_errors() {
    let out = logmill(&["replay", "--parser", "nope", "Cargo.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no parser definition named `nope`"), "{}", text(&out.stderr));
    let out = logmill(&["replay", "/nonexistent/file.log"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/file.log"), "{}", text(&out.stderr));
}

#[test]
fn parsers_lists_builtins() {
    let out = logmill(&["parsers"]);
    assert!(out.status.success());
    let list = text(&out.stdout);
    for name in ["deis-router", "nginx-combined", "apache-common"] {
        assert!(list.contains(name), "{list}");
    }
}
