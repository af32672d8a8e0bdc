//! The level of an app's log line, for the `level` tag of `app_log_lines`: from a JSON line's
//! `level`, `severity`, `lvl` or `loglevel` (names, or bunyan/pino's numbers), else from the
//! configured regex (its `level` group, else the first group that matched, else the whole match). Levels
//! are folded into a closed set so that log text cannot create series; anything else is no
//! level, and the tag is left out.

use regex::Regex;
use serde::Deserialize;

/// The levels the tag takes.
#[cfg(test)]
pub(crate) const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];

/// Finds levels in log text.
#[derive(Debug, Clone, Default)]
pub struct LevelDetector {
    regex: Option<Regex>,
}

/// The keys a JSON log line names its level with; the first present wins.
#[derive(Deserialize, Default)]
struct Probe {
    level: Option<serde_json::Value>,
    severity: Option<serde_json::Value>,
    lvl: Option<serde_json::Value>,
    loglevel: Option<serde_json::Value>,
}

impl LevelDetector {
    /// `regex`, when set, finds the level in lines that are not JSON objects with one.
    pub(crate) fn new(regex: Option<Regex>) -> Self {
        Self { regex }
    }

    /// The level of `text`, if one can be told.
    pub(crate) fn detect(&self, text: &str) -> Option<&'static str> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            if let Ok(probe) = serde_json::from_str::<Probe>(trimmed) {
                let value =
                    [probe.level, probe.severity, probe.lvl, probe.loglevel].into_iter().flatten().next();
                match value {
                    Some(serde_json::Value::String(s)) => return normalize(&s),
                    Some(serde_json::Value::Number(n)) => return n.as_u64().and_then(bunyan),
                    _ => {}
                }
            }
        }
        let regex = self.regex.as_ref()?;
        let caps = regex.captures(text)?;
        let found =
            caps.name("level").or_else(|| caps.iter().skip(1).flatten().next()).or_else(|| caps.get(0))?;
        normalize(found.as_str())
    }
}

/// bunyan's and pino's numeric levels.
fn bunyan(n: u64) -> Option<&'static str> {
    Some(match n {
        10 => "trace",
        20 => "debug",
        30 => "info",
        40 => "warn",
        50 => "error",
        60 => "fatal",
        _ => return None,
    })
}

/// A level word, in any case, folded into trace, debug, info, warn, error or fatal.
pub(crate) fn normalize(word: &str) -> Option<&'static str> {
    let word = word.trim();
    if word.len() > 13 {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    Some(match lower.as_str() {
        "trace" | "trc" => "trace",
        "debug" | "dbg" | "debu" => "debug",
        "info" | "inf" | "information" | "informational" | "notice" => "info",
        "warn" | "warning" | "wrn" => "warn",
        "error" | "err" | "eror" => "error",
        "fatal" | "ftl" | "critical" | "crit" | "panic" | "alert" | "emerg" | "emergency" => "fatal",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_their_level() {
        let d = LevelDetector::default();
        assert_eq!(d.detect(r#"{"level":"WARNING","msg":"disk"}"#), Some("warn"));
        assert_eq!(d.detect(r#"  {"msg":"x","severity":"Error"}"#), Some("error"));
        assert_eq!(d.detect(r#"{"name":"app","level":30,"msg":"hi"}"#), Some("info"), "bunyan");
        assert_eq!(d.detect(r#"{"level":"verbose"}"#), None, "not in the closed set");
        assert_eq!(d.detect(r#"{"level":"#), None, "broken JSON: no level");
        assert_eq!(d.detect("INFO started"), None, "no regex configured");
    }

    #[test]
    fn the_configured_regex_finds_the_rest() {
        let d = LevelDetector::new(Some(Regex::new(r"(?i)\blevel=(?P<level>\w+)|^\[?(\w+)\]").unwrap()));
        assert_eq!(d.detect("ts=1 level=debug msg=x"), Some("debug"));
        assert_eq!(d.detect("[ERROR] boom"), Some("error"));
        assert_eq!(d.detect("hello"), None);
        // JSON wins over the regex.
        assert_eq!(d.detect(r#"{"level":"fatal","text":"level=info"}"#), Some("fatal"));
        for level in LEVELS {
            assert_eq!(normalize(&level.to_uppercase()), Some(level));
        }
    }
}
