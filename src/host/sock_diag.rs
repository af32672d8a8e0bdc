//! The netstat input's netlink socket: dumps of the kernel's TCP, UDP and Unix socket tables
//! through `NETLINK_SOCK_DIAG` (as `ss` asks), decoded by [`super::netstat`].
//!
//! The socket and its buffer live as long as the input. Besides saving a `socket(2)` and a
//! 64 KiB buffer per sample, a kept socket gets larger answers: the kernel sizes a dump's
//! messages by the largest read the socket has made so far, so a fresh socket's first answer
//! holds some 40 sockets and a kept one's some 370. Every request carries a new sequence
//! number and the decoder skips answers to any other, so what a dump that broke off left
//! behind is never counted in the next one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::netstat::{self, DiagError, DiagReply, SocketCounter, UnixCounts};

/// How long a dump may make us wait for the kernel's next message.
const SOCK_DIAG_TIMEOUT_SECS: libc::time_t = 5;
/// One read of netlink answers. The kernel fills at most 32 KiB per message batch
/// (`netlink_recvmsg` caps what it remembers of our reads there); twice that is never cut.
const SOCK_DIAG_READ_BYTES: usize = 64 * 1024;

/// An open `NETLINK_SOCK_DIAG` socket, and what it has learnt about the kernel.
#[derive(Debug)]
pub(crate) struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// The kernel takes the compatibility request for both TCP families in one dump.
    tcp_both: bool,
    /// The kernel answers for Unix sockets (`unix_diag` is a module of its own).
    unix: bool,
}

/// A refusal that will not change while the process runs: no `sock_diag` (or no handler for a
/// family) in the kernel, or a seccomp profile or LSM that denies it.
pub(crate) fn refused_for_good(e: &DiagError) -> bool {
    matches!(e, DiagError::Kernel(errno) if [
        libc::EPERM,
        libc::EACCES,
        libc::ENOENT,
        libc::EINVAL,
        libc::EOPNOTSUPP,
        libc::EPROTONOSUPPORT,
        libc::EAFNOSUPPORT,
    ]
    .contains(errno))
}

/// No IPv6 in this kernel: nothing to count, as gopsutil without `tcp6`.
fn no_ipv6(e: &DiagError) -> bool {
    matches!(e, DiagError::Kernel(errno) if [libc::ENOENT, libc::EAFNOSUPPORT].contains(errno))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl SockDiag {
    pub fn open() -> Result<Self, DiagError> {
        // SAFETY: socket(2) has no pointer arguments; a non-negative result is a new descriptor
        // that nothing else owns, so OwnedFd may close it.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            );
            if fd < 0 {
                return Err(DiagError::Kernel(last_errno()));
            }
            OwnedFd::from_raw_fd(fd)
        };
        let timeout = libc::timeval { tv_sec: SOCK_DIAG_TIMEOUT_SECS, tv_usec: 0 };
        // SAFETY: `timeout` is a valid timeval and its size is passed with it.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(DiagError::Socket(last_errno()));
        }
        Ok(Self { fd, buf: vec![0; SOCK_DIAG_READ_BYTES], seq: 0, tcp_both: true, unix: true })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` and hands each read of answers to `each` until it says the dump is done.
    fn dump(
        &mut self,
        request: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<DiagReply, DiagError>,
    ) -> Result<(), DiagError> {
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel's address is pid 0, no groups.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `request` and `kernel` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(DiagError::Kernel(last_errno()));
        }
        loop {
            // SAFETY: `buf` is valid and writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| DiagError::Socket(last_errno()))?;
            if n == 0 {
                return Err(DiagError::Malformed);
            }
            if each(&self.buf[..n])? == DiagReply::Done {
                return Ok(());
            }
        }
    }

    /// Counts the TCP and UDP sockets of this network namespace into `counter`.
    pub fn count_inet(&mut self, counter: &mut SocketCounter) -> Result<(), DiagError> {
        use netstat::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
        if self.tcp_both {
            let seq = self.next_seq();
            match self.dump(&netstat::diag_request_tcp_both(seq), |b| counter.add_diag(b, true, seq)) {
                Ok(()) => {}
                // A kernel without the compatibility request: one request per family from now
                // on, counted afresh.
                Err(DiagError::Kernel(_)) => {
                    self.tcp_both = false;
                    counter.clear();
                }
                Err(e) => return Err(e),
            }
        }
        if !self.tcp_both {
            let seq = self.next_seq();
            self.dump(&netstat::diag_request(AF_INET, IPPROTO_TCP, seq), |b| counter.add_diag(b, true, seq))?;
            let seq = self.next_seq();
            match self
                .dump(&netstat::diag_request(AF_INET6, IPPROTO_TCP, seq), |b| counter.add_diag(b, true, seq))
            {
                Err(e) if !no_ipv6(&e) => return Err(e),
                _ => {}
            }
        }
        let seq = self.next_seq();
        self.dump(&netstat::diag_request(AF_INET, IPPROTO_UDP, seq), |b| counter.add_diag(b, false, seq))?;
        let seq = self.next_seq();
        match self
            .dump(&netstat::diag_request(AF_INET6, IPPROTO_UDP, seq), |b| counter.add_diag(b, false, seq))
        {
            Err(e) if !no_ipv6(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Counts the Unix sockets of this network namespace; `None` when the kernel cannot say
    /// (no `unix_diag`), for good, so that the caller reads `/proc/net/unix` instead.
    pub fn count_unix(&mut self) -> Result<Option<UnixCounts>, DiagError> {
        if !self.unix {
            return Ok(None);
        }
        let seq = self.next_seq();
        let mut counts = UnixCounts::default();
        match self.dump(&netstat::unix_diag_request(seq), |b| netstat::add_unix_diag(b, seq, &mut counts)) {
            Ok(()) => Ok(Some(counts)),
            Err(e) if refused_for_good(&e) => {
                self.unix = false;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
