//! `netstat`: sockets by TCP state, and datagram sockets, as Telegraf v1.39.3's
//! `inputs.netstat` counts them over gopsutil v4.26.7's `net.Connections("all")`.
//!
//! Sources: the kernel's socket tables, asked through `NETLINK_SOCK_DIAG` (`inet_diag`, as
//! `ss` and the node exporter's `tcpstat` ask them), else read from `/proc/net/tcp`, `tcp6`,
//! `udp`, `udp6` (Documentation/networking/proc_net_tcp.rst: `sl local rem st …`, addresses
//! as hex `ADDR:PORT`, state as two hex digits); and `/proc/net/unix` (`Num RefCount Protocol
//! Flags Type St Inode Path`). Both give the same sockets of the reader's network namespace
//! (`/proc/net` is `/proc/self/net`), but printing the TCP tables walks every bucket of the
//! kernel's connection hash under `seq_file`: on this 24 GiB machine 3–4 ms per file even
//! when nearly empty, where a netlink dump of both families costs a fraction of a
//! millisecond. Telegraf's rules:
//! - TCP sockets count under their state, `01` ESTABLISHED … `0B` CLOSING;
//! - UDP sockets, and Unix datagram sockets (type 2), count as `udp_socket`;
//! - Unix stream and seqpacket sockets have no state and count as `tcp_none`;
//! - an IP socket whose (type, local address, remote address, state) was already seen is
//!   counted once (so `SO_REUSEPORT` listeners on one port are one `tcp_listen`), an IPv4
//!   address mapped into IPv6 being the same address.
//!
//! Differs from Telegraf: gopsutil walks every process's `/proc/PID/fd` to find who holds
//! each socket, and then counts a Unix socket once per file descriptor that holds it (a
//! socket shared by a forked worker pool counts once per worker). That walk is most of what
//! Telegraf's netstat costs; logmill does not make it and counts each Unix socket once.
//! TCP and UDP counts are the same.
//!
//! Fields (integers): `tcp_established`, `tcp_syn_sent`, `tcp_syn_recv`, `tcp_fin_wait1`,
//! `tcp_fin_wait2`, `tcp_time_wait`, `tcp_close`, `tcp_close_wait`, `tcp_last_ack`,
//! `tcp_listen`, `tcp_closing`, `tcp_none`, `udp_socket`.

use std::collections::HashSet;

use crate::metrics::point::{FieldValue, Point};

use super::Malformed;

/// Field names by TCP state number (`include/net/tcp_states.h`: 1 ESTABLISHED … 11 CLOSING).
const TCP_STATE_FIELDS: [&str; 11] = [
    "tcp_established",
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp_fin_wait1",
    "tcp_fin_wait2",
    "tcp_time_wait",
    "tcp_close",
    "tcp_close_wait",
    "tcp_last_ack",
    "tcp_listen",
    "tcp_closing",
];

/// What one sample counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SocketCounts {
    /// By state number − 1.
    pub tcp: [u64; 11],
    pub tcp_none: u64,
    pub udp_socket: u64,
}

/// An IP socket as gopsutil tells duplicates apart: protocol, addresses, ports and (TCP)
/// state. An IPv4-mapped IPv6 address is keyed as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketKey {
    tcp: bool,
    family: u8,
    local: [u8; 16],
    local_port: u16,
    remote: [u8; 16],
    remote_port: u16,
    state: u8,
}

/// The fields packed and handed to the hasher in one write: the derived `Hash` makes nine
/// (a length before each array), and SipHash's cost per write made hashing 7 % of a whole
/// cycle with ~750 sockets (every socket of a sample goes through the set).
impl std::hash::Hash for SocketKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut bytes = [0u8; 39];
        bytes[0] = u8::from(self.tcp);
        bytes[1] = self.family;
        bytes[2] = self.state;
        bytes[3..19].copy_from_slice(&self.local);
        bytes[19..35].copy_from_slice(&self.remote);
        bytes[35..37].copy_from_slice(&self.local_port.to_ne_bytes());
        bytes[37..39].copy_from_slice(&self.remote_port.to_ne_bytes());
        state.write(&bytes);
    }
}

/// Counts sockets across the tables of one sample, remembering which IP sockets it has seen.
///
/// Sockets from netlink that sit in the kernel's connection table (TCP in any state but
/// LISTEN) and are bound to no device are unique among themselves: the table holds one socket
/// per addresses, ports and device, and an IPv4-mapped IPv6 connection is entered as the IPv4
/// one. They are counted as they come, without hashing (which was a third of netstat's cost
/// with 6,000 TIME_WAIT sockets), and only checked against the set when a socket bound to a
/// device (VRF) could be their twin. Everything else (listeners, UDP, `/proc/net` lines,
/// sockets bound to a device) goes through the set.
#[derive(Debug, Default)]
pub(crate) struct SocketCounter {
    counts: SocketCounts,
    seen: HashSet<SocketKey>,
    /// The connection-table sockets counted without the set.
    unbound: Vec<SocketKey>,
    /// The set holds a connection-table socket bound to a device.
    bound_connections: bool,
}

/// `TCP_LISTEN` of `include/net/tcp_states.h`.
const TCP_LISTEN: u8 = 10;

/// `0000000000000000FFFF0000` + 8 hex digits: `::ffff:a.b.c.d` as `/proc/net/tcp6` prints it
/// (four native-order words), whose last word is printed as `/proc/net/tcp` prints IPv4.
const PROC_V4_MAPPED_PREFIX: &str = "0000000000000000FFFF0000";
/// `::ffff:0:0/96` in network order, as `inet_diag` gives addresses.
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// A `/proc/net` address (`0100007F:1F90`) as (family, bytes in printed order, port).
fn proc_address(text: &str) -> Option<(u8, [u8; 16], u16)> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let (family, ip) = match ip.len() {
        8 => (4, ip),
        32 if ip[..24].eq_ignore_ascii_case(PROC_V4_MAPPED_PREFIX) => (4, &ip[24..]),
        32 => (6, ip),
        _ => return None,
    };
    let mut bytes = [0u8; 16];
    for (i, pair) in ip.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        bytes[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some((family, bytes, port))
}

/// An `inet_diag` address (16 bytes, network order; IPv4 in the first 4).
fn diag_address(family: u8, raw: &[u8]) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    if family == AF_INET6 && raw[..12] == V4_MAPPED_PREFIX {
        bytes[..4].copy_from_slice(&raw[12..16]);
        (4, bytes)
    } else if family == AF_INET6 {
        bytes.copy_from_slice(&raw[..16]);
        (6, bytes)
    } else {
        bytes[..4].copy_from_slice(&raw[..4]);
        (4, bytes)
    }
}

// `<linux/netlink.h>`, `<linux/sock_diag.h>`, `<linux/inet_diag.h>`.
const NLMSG_HEADER_BYTES: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The compatibility request of `<linux/inet_diag.h>`: the kernel answers it with a dump of
/// both families (`inet_diag_dump_compat` sets `AF_UNSPEC`), one walk of the connection hash
/// instead of one per family — half of netstat's cost.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, src_len, dst_len, ext, `inet_diag_sockid` (48 bytes),
/// states (u32), dbs (u32).
const INET_DIAG_REQ_BYTES: usize = 60;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states (u32), `inet_diag_sockid`
/// (48 bytes).
const INET_DIAG_REQ_V2_BYTES: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, `inet_diag_sockid` (sport, dport,
/// `src[16]`, `dst[16]`, if, `cookie[2]`), expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG_BYTES: usize = 72;
/// `struct unix_diag_req` (`<linux/unix_diag.h>`): family, protocol, pad, states (u32), ino
/// (u32), show (u32), `cookie[2]`.
const UNIX_DIAG_REQ_BYTES: usize = 24;
/// `struct unix_diag_msg`: family, type, state, pad, ino (u32), `cookie[2]`.
const UNIX_DIAG_MSG_BYTES: usize = 16;
/// `SOCK_DGRAM` in `udiag_type`, as in `/proc/net/unix`'s `Type` column.
const SOCK_DGRAM: u8 = 2;
pub(crate) const AF_UNIX: u8 = 1;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// `idiag_states`: ESTABLISHED (1) … CLOSING (11), the states `/proc/net/tcp` lists (SYN_RECV
/// brings the kernel's request sockets, `TCP_NEW_SYN_RECV`, along). Not every bit: since Linux
/// 6.8 `TCPF_BOUND_INACTIVE` (1 << 13) adds sockets that are bound and nothing more, reported
/// as CLOSE, which `/proc/net/tcp` and so Telegraf never count, and it makes the kernel walk its
/// bind hash as well (≈ 0.15 ms a dump on this machine).
const INET_DIAG_STATES: u32 = 0xffe;

/// The request for a dump of the sockets of `family` and `protocol` in the states Telegraf
/// counts.
pub(crate) fn diag_request(
    family: u8,
    protocol: u8,
    seq: u32,
) -> [u8; NLMSG_HEADER_BYTES + INET_DIAG_REQ_V2_BYTES] {
    let mut req = [0u8; NLMSG_HEADER_BYTES + INET_DIAG_REQ_V2_BYTES];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = family;
    req[17] = protocol;
    req[20..24].copy_from_slice(&INET_DIAG_STATES.to_ne_bytes());
    req
}

/// The compatibility request for the TCP sockets of both families in the states Telegraf
/// counts.
pub(crate) fn diag_request_tcp_both(seq: u32) -> [u8; NLMSG_HEADER_BYTES + INET_DIAG_REQ_BYTES] {
    let mut req = [0u8; NLMSG_HEADER_BYTES + INET_DIAG_REQ_BYTES];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = AF_INET;
    // idiag_states, after the 4 leading bytes and the 48 of the socket id.
    req[16 + 52..16 + 56].copy_from_slice(&INET_DIAG_STATES.to_ne_bytes());
    req
}

/// The request for every Unix socket, in every state, with no attributes: the socket's type is
/// in the fixed part of each answer, which is all netstat needs.
pub(crate) fn unix_diag_request(seq: u32) -> [u8; NLMSG_HEADER_BYTES + UNIX_DIAG_REQ_BYTES] {
    let mut req = [0u8; NLMSG_HEADER_BYTES + UNIX_DIAG_REQ_BYTES];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = AF_UNIX;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    req
}

/// Unix sockets as Telegraf names them, counted apart from the IP ones until their dump is
/// complete, so that a dump that breaks off can be replaced by `/proc/net/unix` whole.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnixCounts {
    /// Stream and seqpacket sockets: `tcp_none`.
    pub stream: u64,
    /// Datagram sockets: part of `udp_socket`.
    pub dgram: u64,
}

/// Walks one read of netlink replies to the request numbered `seq`, handing each socket
/// message's payload to `each`. Messages of another number (left over from a dump that broke
/// off on this socket) are skipped.
fn walk_replies(
    buf: &[u8],
    seq: u32,
    mut each: impl FnMut(&[u8]) -> Result<(), DiagError>,
) -> Result<DiagReply, DiagError> {
    let word = |i: usize| [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
    let mut at = 0;
    while at + NLMSG_HEADER_BYTES <= buf.len() {
        let len = u32::from_ne_bytes(word(at)) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let msg_seq = u32::from_ne_bytes(word(at + 8));
        if len < NLMSG_HEADER_BYTES || at + len > buf.len() {
            return Err(DiagError::Malformed);
        }
        let payload = &buf[at + NLMSG_HEADER_BYTES..at + len];
        // NLMSG_DONE carries the dump's status and NLMSG_ERROR a negated errno (0: an ack).
        let status = || payload.get(..4).map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
        if msg_seq == seq {
            match kind {
                NLMSG_DONE if status() < 0 => return Err(DiagError::Kernel(-status())),
                NLMSG_DONE => return Ok(DiagReply::Done),
                NLMSG_ERROR => return Err(DiagError::Kernel(-status())),
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => each(payload)?,
                // Anything else (NLMSG_NOOP, an overrun notice) carries no socket.
                _ => {}
            }
        }
        at += (len + 3) & !3;
    }
    Ok(DiagReply::More)
}

/// Counts the sockets in one read of `unix_diag` replies to the request numbered `seq`.
pub(crate) fn add_unix_diag(buf: &[u8], seq: u32, counts: &mut UnixCounts) -> Result<DiagReply, DiagError> {
    walk_replies(buf, seq, |payload| {
        if payload.len() < UNIX_DIAG_MSG_BYTES {
            return Err(DiagError::Malformed);
        }
        if payload[1] == SOCK_DGRAM {
            counts.dgram += 1;
        } else {
            counts.stream += 1;
        }
        Ok(())
    })
}

/// What a buffer of netlink replies said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiagReply {
    /// More messages follow in the next read.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
}

/// Why a dump could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DiagError {
    #[error("the kernel refused the dump (errno {0})")]
    Kernel(i32),
    #[error("reading the dump failed (errno {0})")]
    Socket(i32),
    #[error("a netlink message is cut short or mis-sized")]
    Malformed,
}

impl SocketCounter {
    /// Counts `key` unless the set has seen it.
    fn count(&mut self, key: SocketKey) {
        if self.seen.insert(key) {
            self.add(&key);
        }
    }

    fn add(&mut self, key: &SocketKey) {
        if !key.tcp {
            self.counts.udp_socket += 1;
        } else if (1..=11).contains(&key.state) {
            self.counts.tcp[usize::from(key.state) - 1] += 1;
        }
        // A TCP state Telegraf has no name for counts nowhere.
    }

    /// Counts the sockets of `/proc/net/tcp` or `tcp6` (`tcp`), or `udp` / `udp6`.
    pub fn add_inet(&mut self, text: &str, tcp: bool) -> Vec<Malformed> {
        let mut malformed = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            // gopsutil needs the ten columns up to the inode.
            let parsed = (words.len() >= 10)
                .then(|| {
                    Some((
                        proc_address(words[1])?,
                        proc_address(words[2])?,
                        u8::from_str_radix(words[3], 16).ok()?,
                    ))
                })
                .flatten();
            let Some(((family, local, local_port), (_, remote, remote_port), state)) = parsed else {
                malformed.push(Malformed { line: n + 1 });
                continue;
            };
            let state = if tcp { state } else { 0 };
            self.count(SocketKey { tcp, family, local, local_port, remote, remote_port, state });
        }
        malformed
    }

    /// Counts the sockets in one read of `inet_diag` replies to the request numbered `seq`
    /// (several messages, 4-byte aligned). `tcp` says which protocol was asked for.
    pub fn add_diag(&mut self, buf: &[u8], tcp: bool, seq: u32) -> Result<DiagReply, DiagError> {
        walk_replies(buf, seq, |payload| {
            if payload.len() < INET_DIAG_MSG_BYTES {
                return Err(DiagError::Malformed);
            }
            let family = payload[0];
            let state = if tcp { payload[1] } else { 0 };
            let (family_key, local) = diag_address(family, &payload[8..24]);
            let (_, remote) = diag_address(family, &payload[24..40]);
            let key = SocketKey {
                tcp,
                family: family_key,
                local,
                local_port: u16::from_be_bytes([payload[4], payload[5]]),
                remote,
                remote_port: u16::from_be_bytes([payload[6], payload[7]]),
                state,
            };
            let connection = tcp && state != TCP_LISTEN;
            let bound = payload[40..44] != [0; 4];
            if connection && !bound {
                self.unbound.push(key);
                self.add(&key);
            } else {
                self.bound_connections |= connection;
                self.count(key);
            }
            Ok(())
        })
    }

    /// Adds the Unix sockets of a complete `unix_diag` dump.
    pub fn add_unix_counts(&mut self, unix: UnixCounts) {
        self.counts.tcp_none += unix.stream;
        self.counts.udp_socket += unix.dgram;
    }

    /// Forgets every socket, keeping the memory for the next sample.
    pub fn clear(&mut self) {
        self.counts = SocketCounts::default();
        self.seen.clear();
        self.unbound.clear();
        self.bound_connections = false;
    }

    /// Counts the sockets of `/proc/net/unix`.
    pub fn add_unix(&mut self, text: &str) -> Vec<Malformed> {
        let mut malformed = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            match words.get(4).map(|t| t.parse::<u32>()) {
                Some(Ok(2)) if words.len() >= 7 => self.counts.udp_socket += 1,
                Some(Ok(_)) if words.len() >= 7 => self.counts.tcp_none += 1,
                _ => malformed.push(Malformed { line: n + 1 }),
            }
        }
        malformed
    }

    /// The counts, each distinct socket once.
    pub fn counts(&self) -> SocketCounts {
        let mut counts = self.counts.clone();
        if self.bound_connections {
            // A connection bound to a device and one bound to none with the same addresses,
            // ports and state: counted once, by the set.
            for key in self.unbound.iter().filter(|k| (1..=11).contains(&k.state) && self.seen.contains(k)) {
                let count = &mut counts.tcp[usize::from(key.state) - 1];
                *count = count.saturating_sub(1);
            }
        }
        counts
    }
}

/// The `netstat` point.
pub(crate) fn netstat_point(counts: &SocketCounts) -> Point {
    let mut p = Point::new("netstat");
    for (name, count) in TCP_STATE_FIELDS.iter().zip(counts.tcp) {
        p = p.field(*name, int_count(count));
    }
    p.field("tcp_none", int_count(counts.tcp_none)).field("udp_socket", int_count(counts.udp_socket))
}

fn int_count(v: u64) -> FieldValue {
    super::int(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn field(p: &Point, key: &str) -> i64 {
        match p.field_value(key) {
            Some(FieldValue::Int(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// Socket tables built from proc_net_tcp.rst's layout (see `testdata/proc/README.md` for
    /// what each line is); expected counts by hand.
    #[test]
    fn socket_tables() {
        let (tcp, tcp6, udp, udp6, unix) = (
            testdata("odd/net-tcp"),
            testdata("odd/net-tcp6"),
            testdata("odd/net-udp"),
            testdata("odd/net-udp6"),
            testdata("odd/net-unix"),
        );
        let mut counter = SocketCounter::default();
        assert!(counter.add_inet(&tcp, true).is_empty());
        assert!(counter.add_inet(&tcp6, true).is_empty());
        assert_eq!(counter.add_inet(&udp, false), [Malformed { line: 4 }]);
        assert!(counter.add_inet(&udp6, false).is_empty());
        assert_eq!(counter.add_unix(&unix), [Malformed { line: 6 }]);
        let p = netstat_point(&counter.counts());
        // tcp: two LISTEN on 0.0.0.0:80 (reuseport, one count) + 127.0.0.1:4150 LISTEN,
        // 2 ESTABLISHED, 1 TIME_WAIT; tcp6: :::22 LISTEN, 1 ESTABLISHED, and the v4-mapped twin
        // of a tcp ESTABLISHED line (counted once).
        assert_eq!(field(&p, "tcp_listen"), 3);
        assert_eq!(field(&p, "tcp_established"), 3);
        assert_eq!(field(&p, "tcp_time_wait"), 1);
        assert_eq!(field(&p, "tcp_syn_sent"), 0);
        // udp: 2 sockets (+1 malformed line); udp6: 1; unix: 2 DGRAM.
        assert_eq!(field(&p, "udp_socket"), 2 + 1 + 2);
        // unix: 2 STREAM + 1 SEQPACKET.
        assert_eq!(field(&p, "tcp_none"), 3);
        assert_eq!(p.fields.len(), 13);
    }

    #[test]
    fn odd_lines() {
        let mut counter = SocketCounter::default();
        let text = "  sl  local_address rem_address   st\n   0: zz:0050 00000000:0000 0A 0 0 0 0 0 1\n   1: short\n   2: 0100007F:0050 00000000:0000 0C 00000000:00000000 00:00000000 00000000 0 0 9\n";
        assert_eq!(counter.add_inet(text, true), [Malformed { line: 2 }, Malformed { line: 3 }]);
        assert_eq!(counter.counts(), SocketCounts::default(), "state 0C has no Telegraf field");
        assert_eq!(counter.add_unix("Num\nbad line\n"), [Malformed { line: 2 }]);
    }

    /// One `inet_diag_msg` reply as the kernel lays it out (`<linux/inet_diag.h>`).
    fn diag_msg(family: u8, state: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72];
        m[0..4].copy_from_slice(&88u32.to_ne_bytes());
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        m[16] = family;
        m[17] = state;
        m[20..22].copy_from_slice(&sport.to_be_bytes());
        m[22..24].copy_from_slice(&dport.to_be_bytes());
        m[24..40].copy_from_slice(&src);
        m[40..56].copy_from_slice(&dst);
        m
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&a);
        b
    }

    fn done() -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&3u16.to_ne_bytes());
        m
    }

    /// Sets `nlmsg_seq` (bytes 8..12 of `struct nlmsghdr`) of every message in `buf`.
    fn numbered(mut buf: Vec<u8>, seq: u32) -> Vec<u8> {
        let mut at = 0;
        while at < buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            buf[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
            at += (len + 3) & !3;
        }
        buf
    }

    /// One `unix_diag_msg` reply (`<linux/unix_diag.h>`: family, type, state, pad, ino,
    /// cookie), with the `UNIX_DIAG_SHUTDOWN` attribute (a u8 padded to 8 bytes) that kernels
    /// add to every answer.
    fn unix_msg(kind: u8, state: u8, ino: u32) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 16 + 8];
        m[0..4].copy_from_slice(&40u32.to_ne_bytes());
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        m[16] = 1;
        m[17] = kind;
        m[18] = state;
        m[20..24].copy_from_slice(&ino.to_ne_bytes());
        m[32..34].copy_from_slice(&5u16.to_ne_bytes());
        m[34..36].copy_from_slice(&6u16.to_ne_bytes());
        m
    }

    /// The sockets of `odd/net-tcp` and `odd/net-tcp6`, as netlink replies, but for the
    /// IPv4-mapped twin (a listener here: see below).
    #[test]
    fn netlink_replies() {
        let any = [0u8; 16];
        let lo = [127, 0, 0, 1];
        let mut read1 = Vec::new();
        read1.extend(diag_msg(AF_INET, 10, any, 80, any, 0));
        read1.extend(diag_msg(AF_INET, 10, any, 80, any, 0)); // SO_REUSEPORT twin
        read1.extend(diag_msg(AF_INET, 10, v4(lo), 4150, any, 0));
        read1.extend(diag_msg(AF_INET, 1, v4(lo), 4150, v4(lo), 41652));
        let mut read2 = Vec::new();
        read2.extend(diag_msg(AF_INET, 1, v4(lo), 41652, v4(lo), 4150));
        read2.extend(diag_msg(AF_INET, 6, v4(lo), 50000, v4(lo), 8080));
        read2.extend(done());
        let mut counter = SocketCounter::default();
        assert_eq!(counter.add_diag(&read1, true, 0), Ok(DiagReply::More));
        assert_eq!(counter.add_diag(&read2, true, 0), Ok(DiagReply::Done));
        let mut six = Vec::new();
        six.extend(diag_msg(AF_INET6, 10, any, 22, any, 0));
        // An IPv6 listener on ::ffff:127.0.0.1:4150 beside the IPv4 one (SO_REUSEPORT across
        // families): one listener, keyed as IPv4. (An IPv4-mapped connection has no IPv4
        // twin in a dump: the kernel enters it in its table as the IPv4 connection it is,
        // one socket per addresses and ports.)
        six.extend(diag_msg(AF_INET6, 10, mapped(lo), 4150, any, 0));
        let fe80 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x52, 0x54, 0, 0xff, 0xfe, 0xf3, 0xa8, 0x01];
        six.extend(diag_msg(AF_INET6, 1, fe80, 22, fe80, 54321));
        six.extend(done());
        assert_eq!(counter.add_diag(&six, true, 0), Ok(DiagReply::Done));
        let mut udp = diag_msg(AF_INET, 7, any, 68, any, 0);
        udp.extend(diag_msg(AF_INET, 7, v4([127, 0, 0, 53]), 53, any, 0));
        udp.extend(done());
        assert_eq!(counter.add_diag(&udp, false, 0), Ok(DiagReply::Done));
        let c = counter.counts();
        // As the /proc tables of `socket_tables`: 3 listen, 3 established, 1 time-wait, 2 UDP.
        assert_eq!((c.tcp[9], c.tcp[0], c.tcp[5], c.udp_socket), (3, 3, 1, 2));

        // The kernel's refusal, and a message cut short.
        let mut err = vec![0u8; 36];
        err[0..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&2u16.to_ne_bytes());
        err[16..20].copy_from_slice(&(-93i32).to_ne_bytes());
        assert_eq!(SocketCounter::default().add_diag(&err, true, 0), Err(DiagError::Kernel(93)));
        let cut = &diag_msg(AF_INET, 1, any, 1, any, 2)[..60];
        assert_eq!(SocketCounter::default().add_diag(cut, true, 0), Err(DiagError::Malformed));
        let mut short = diag_msg(AF_INET, 1, any, 1, any, 2);
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(SocketCounter::default().add_diag(&short, true, 0), Err(DiagError::Malformed));
        // The request: header, SOCK_DIAG_BY_FAMILY, REQUEST|DUMP, family, protocol, and the
        // state bits 1 (ESTABLISHED) to 11 (CLOSING) of include/net/tcp_states.h, not 13
        // (BOUND_INACTIVE): 0b1111_1111_1110.
        let req = diag_request(AF_INET6, IPPROTO_TCP, 7);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 0x301);
        assert_eq!((req[16], req[17]), (10, 6));
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 0b1111_1111_1110);
        let req = diag_request_tcp_both(8);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 18);
        assert_eq!(
            u32::from_ne_bytes(req[68..72].try_into().unwrap()),
            0b1111_1111_1110,
            "idiag_states after family, lengths, ext and the socket id"
        );
        // Its answers come as type 18, both families in one dump.
        let mut both = diag_msg(AF_INET, 10, any, 80, any, 0);
        both.extend(diag_msg(AF_INET6, 10, any, 80, any, 0));
        for m in both.chunks_mut(88) {
            m[4..6].copy_from_slice(&18u16.to_ne_bytes());
        }
        both.extend(done());
        let mut counter = SocketCounter::default();
        assert_eq!(counter.add_diag(&both, true, 0), Ok(DiagReply::Done));
        assert_eq!(counter.counts().tcp[9], 2, "0.0.0.0:80 and :::80 are two listeners");
    }

    /// A socket that keeps its netlink socket between samples reads the answers to its own
    /// request only: a message numbered otherwise (from a dump that broke off) is skipped, and
    /// a dump that ends in an error status is an error, not a short count.
    #[test]
    fn netlink_replies_by_number() {
        let any = [0u8; 16];
        let stale = numbered(diag_msg(AF_INET, 1, v4([10, 0, 0, 1]), 1, any, 2), 6);
        let mut read = stale;
        read.extend(numbered(diag_msg(AF_INET, 10, any, 80, any, 0), 7));
        read.extend(numbered(done(), 6));
        read.extend(numbered(diag_msg(AF_INET, 10, any, 443, any, 0), 7));
        read.extend(numbered(done(), 7));
        let mut counter = SocketCounter::default();
        assert_eq!(counter.add_diag(&read, true, 7), Ok(DiagReply::Done));
        assert_eq!(counter.counts().tcp[9], 2, "the two LISTEN sockets of dump 7");
        assert_eq!(counter.counts().tcp[0], 0, "dump 6's ESTABLISHED socket is not counted");
        counter.clear();
        assert_eq!(counter.counts(), SocketCounts::default());
        let mut failed = numbered(done(), 7);
        failed[16..20].copy_from_slice(&(-4i32).to_ne_bytes());
        assert_eq!(counter.add_diag(&failed, true, 7), Err(DiagError::Kernel(4)));
    }

    /// Connections are counted without the set, unless a socket bound to a device (a VRF's)
    /// could be the twin of one bound to none: `idiag_if` is the 4 bytes after the addresses.
    #[test]
    fn connections_bound_to_devices() {
        let lo = v4([127, 0, 0, 1]);
        let on_device = |mut m: Vec<u8>, ifindex: u32| {
            m[56..60].copy_from_slice(&ifindex.to_ne_bytes());
            m
        };
        let mut counter = SocketCounter::default();
        let mut read = diag_msg(AF_INET, 6, lo, 5000, lo, 80);
        read.extend(diag_msg(AF_INET, 6, lo, 5001, lo, 80));
        read.extend(done());
        assert_eq!(counter.add_diag(&read, true, 0), Ok(DiagReply::Done));
        assert_eq!(counter.counts().tcp[5], 2, "no device: each counted as it comes");
        // The same connection in a VRF (device 5) and bound to none: one, as gopsutil keys
        // them; two VRFs (5, 6) with the same other connection: one.
        let mut vrf = on_device(diag_msg(AF_INET, 6, lo, 5000, lo, 80), 5);
        vrf.extend(on_device(diag_msg(AF_INET, 1, lo, 6000, lo, 80), 5));
        vrf.extend(on_device(diag_msg(AF_INET, 1, lo, 6000, lo, 80), 6));
        vrf.extend(done());
        assert_eq!(counter.add_diag(&vrf, true, 0), Ok(DiagReply::Done));
        let c = counter.counts();
        assert_eq!((c.tcp[5], c.tcp[0]), (2, 1), "TIME_WAIT 5000 and 5001, ESTABLISHED 6000");
        // A state Telegraf has no name for, bound to no device: not counted, not corrected.
        let mut odd = diag_msg(AF_INET, 12, lo, 7000, lo, 80);
        odd.extend(done());
        assert_eq!(counter.add_diag(&odd, true, 0), Ok(DiagReply::Done));
        assert_eq!(counter.counts(), c);
    }

    /// The sockets of `odd/net-unix` (two stream, one seqpacket, two datagram) as unix_diag
    /// answers; types from `<linux/net.h>`: SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5.
    #[test]
    fn unix_diag_replies() {
        let mut first = unix_msg(1, 10, 1001);
        first.extend(unix_msg(1, 1, 1002));
        first.extend(unix_msg(5, 10, 1003));
        let mut second = unix_msg(2, 7, 1004);
        second.extend(unix_msg(2, 1, 1005));
        second.extend(done());
        let mut unix = UnixCounts::default();
        assert_eq!(add_unix_diag(&first, 0, &mut unix), Ok(DiagReply::More));
        assert_eq!(add_unix_diag(&second, 0, &mut unix), Ok(DiagReply::Done));
        assert_eq!(unix, UnixCounts { stream: 3, dgram: 2 });
        let mut counter = SocketCounter::default();
        counter.add_unix_counts(unix);
        // As `socket_tables` counts the same sockets from /proc/net/unix.
        assert_eq!((counter.counts().tcp_none, counter.counts().udp_socket), (3, 2));
        assert_eq!(add_unix_diag(&unix_msg(1, 1, 1)[..28], 0, &mut unix), Err(DiagError::Malformed));
        // The request: 16 bytes of header, then family AF_UNIX, protocol 0, pad, every state
        // bit, no inode, nothing to show, no cookie.
        let req = unix_diag_request(9);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 9);
        assert_eq!(&req[16..20], &[1, 0, 0, 0]);
        assert_eq!(&req[20..24], &[0xff; 4]);
        assert_eq!(&req[24..40], &[0; 16]);
    }
}
