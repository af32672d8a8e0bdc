//! `net`: interface counters of `/proc/net/dev`, as Telegraf v1.39.3's `inputs.net` writes
//! them (counters through gopsutil v4.26.7's `net.IOCounters`).
//!
//! `/proc/net/dev` has two header lines, then per interface `name:` and 16 counters: receive
//! bytes, packets, errs, drop, fifo, frame, compressed, multicast, then transmit bytes,
//! packets, errs, drop, fifo, colls, carrier, compressed. The name is right-aligned in six
//! columns, so a longer one (up to 15 bytes, IFNAMSIZ − 1) touches the colon, and a large
//! counter can touch it from the other side (`eth0:123456789012`): the line is split at the
//! first colon, which an interface name cannot contain.
//!
//! Tag `interface`. Integer fields `bytes_sent`, `bytes_recv`, `packets_sent`,
//! `packets_recv`, `err_in`, `err_out`, `drop_in`, `drop_out`, and `speed` (Mbit/s from
//! `/sys/class/net/<if>/speed`, −1 when the driver has none). Telegraf 1.39 no longer writes
//! the `interface=all` protocol point (`ignore_protocol_stats` is deprecated and ignored).
//!
//! Which interfaces: those of `interfaces` (globs, whatever their state) when set; else every
//! interface that is up and not loopback. Telegraf asks the kernel for the flags (and, when
//! `HOST_PROC` is set, skips the check and reports every interface); logmill reads them from
//! `/sys/class/net/<if>/flags` under `HOST_SYS`, and keeps an interface whose flags it cannot
//! read.

use crate::metrics::point::Point;

use super::{int, Malformed};
use crate::glob::{any_matches, Glob};

/// One interface's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetDev {
    pub name: String,
    pub bytes_recv: u64,
    pub packets_recv: u64,
    pub err_in: u64,
    pub drop_in: u64,
    pub bytes_sent: u64,
    pub packets_sent: u64,
    pub err_out: u64,
    pub drop_out: u64,
}

/// Parses `/proc/net/dev`.
pub(crate) fn parse_net_dev(text: &str) -> (Vec<NetDev>, Vec<Malformed>) {
    let mut devs = Vec::new();
    let mut malformed = Vec::new();
    for (n, line) in text.lines().enumerate().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, counters)) = line.split_once(':') else {
            malformed.push(Malformed { line: n + 1 });
            continue;
        };
        let name = name.trim();
        let values: Option<Vec<u64>> = counters.split_ascii_whitespace().map(|w| w.parse().ok()).collect();
        match values {
            Some(v) if v.len() >= 12 && !name.is_empty() => devs.push(NetDev {
                name: name.to_owned(),
                bytes_recv: v[0],
                packets_recv: v[1],
                err_in: v[2],
                drop_in: v[3],
                bytes_sent: v[8],
                packets_sent: v[9],
                err_out: v[10],
                drop_out: v[11],
            }),
            _ => malformed.push(Malformed { line: n + 1 }),
        }
    }
    (devs, malformed)
}

/// `IFF_UP` and `IFF_LOOPBACK` of `<linux/if.h>`, as `/sys/class/net/<if>/flags` prints them
/// (hexadecimal).
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

/// Parses a sysfs `flags` file (`0x1003\n`).
pub(crate) fn parse_flags(text: &str) -> Option<u32> {
    let t = text.trim();
    u32::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

/// Whether `name` is reported: a configured glob matches it, or, with none configured, its
/// flags (`None`: unknown) say up and not loopback.
pub(crate) fn wanted(name: &str, interfaces: &[Glob], flags: Option<u32>) -> bool {
    if !interfaces.is_empty() {
        return any_matches(interfaces, name);
    }
    match flags {
        Some(f) => f & IFF_UP != 0 && f & IFF_LOOPBACK == 0,
        None => true,
    }
}

/// Parses a sysfs `speed` file (Mbit/s); −1 when absent or unreadable, as Telegraf writes it
/// (virtual interfaces answer the read with EINVAL, down ones print −1).
pub(crate) fn parse_speed(text: Option<&str>) -> i64 {
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(-1)
}

/// The `net` point of an interface.
pub(crate) fn net_point(dev: &NetDev, speed: i64) -> Point {
    Point::new("net")
        .tag("interface", dev.name.clone())
        .field("bytes_sent", int(dev.bytes_sent))
        .field("bytes_recv", int(dev.bytes_recv))
        .field("packets_sent", int(dev.packets_sent))
        .field("packets_recv", int(dev.packets_recv))
        .field("err_in", int(dev.err_in))
        .field("err_out", int(dev.err_out))
        .field("drop_in", int(dev.drop_in))
        .field("drop_out", int(dev.drop_out))
        .field("speed", crate::metrics::point::FieldValue::Int(speed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::point::FieldValue;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn captured_net_dev() {
        let (devs, bad) = parse_net_dev(&testdata("captured/net/dev"));
        assert!(bad.is_empty());
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["lo", "ifb0", "ifb1", "eth0"]);
        // eth0: 90571427 4716 0 0 0 0 0 0 | 284221 3473 0 0 0 0 0 0
        let p = net_point(&devs[3], -1);
        assert_eq!(p.tag_value("interface"), Some("eth0"));
        assert_eq!(p.field_value("bytes_recv"), Some(&FieldValue::Int(90571427)));
        assert_eq!(p.field_value("packets_recv"), Some(&FieldValue::Int(4716)));
        assert_eq!(p.field_value("bytes_sent"), Some(&FieldValue::Int(284221)));
        assert_eq!(p.field_value("packets_sent"), Some(&FieldValue::Int(3473)));
        assert_eq!(p.field_value("speed"), Some(&FieldValue::Int(-1)));
        assert_eq!(p.fields.len(), 9);
        // This machine's sysfs flags: eth0 0x1003 (up), ifb0 0x82 (down), lo 0x9 (loopback).
        assert!(wanted("eth0", &[], parse_flags("0x1003\n")));
        assert!(!wanted("ifb0", &[], parse_flags("0x82\n")));
        assert!(!wanted("lo", &[], parse_flags("0x9\n")));
        assert!(wanted("cni0", &[], None), "flags unknown: kept");
        let globs = [Glob::new("lo").unwrap(), Glob::new("ifb*").unwrap()];
        assert!(wanted("lo", &globs, parse_flags("0x9")) && wanted("ifb1", &globs, None));
        assert!(!wanted("eth0", &globs, parse_flags("0x1003")));
    }

    /// Long names and huge counters touching the colon (built from the kernel's
    /// `dev_seq_printf_stats` format, `%6s:%8llu %7llu …`).
    #[test]
    fn long_names_and_wide_counters() {
        let (devs, bad) = parse_net_dev(&testdata("odd/net-dev"));
        assert_eq!(bad, [Malformed { line: 6 }, Malformed { line: 7 }]);
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["veth1a2b3c4d5e6", "eth0", "cali0123456789a"]);
        assert_eq!(devs[0].bytes_recv, 1234);
        assert_eq!(devs[1].bytes_recv, 123456789012, "no space after the colon");
        assert_eq!(devs[1].bytes_sent, 18446744073709551615);
        assert_eq!(net_point(&devs[1], 10000).field_value("bytes_sent"), Some(&FieldValue::Int(i64::MAX)));
        assert_eq!(devs[2].drop_out, 7);
        assert_eq!(parse_speed(Some("10000\n")), 10000);
        assert_eq!(parse_speed(Some("-1\n")), -1);
        assert_eq!(parse_speed(None), -1);
    }
}
