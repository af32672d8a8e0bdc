//! One TCP (or TLS) connection to nsqd, shared by the producer and the consumer.
//!
//! [`Connection::connect`] dials with a timeout and runs the handshake: the magic, IDENTIFY
//! with `feature_negotiation` (client id, hostname, user agent, heartbeat interval, output
//! buffering, msg_timeout), the upgrade to TLS when asked for and granted, and AUTH when the
//! server says `auth_required`. The negotiated answer ([`Negotiated`]) is what the roles obey:
//! `max_rdy_count` caps RDY, `msg_timeout` is the time a handler has.
//!
//! After the handshake the connection is a pump that never blocks on one direction:
//! [`Connection::io`] waits for whichever comes first, bytes to read or room to write the
//! pending output, so a connection task can put it in its one `select!` next to its own
//! channels. Heartbeats are answered with NOP by [`Connection::next_frame`] itself, as soon as
//! they are decoded, whatever the application is doing. Silence longer than the read timeout
//! (at least two heartbeat intervals, after which nsqd has given up on us anyway) and pending
//! output that makes no progress for the write timeout end the connection.
//!
//! Both roles reconnect with [`crate::backoff::Backoff`].

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;

use super::protocol::{self, EncodeError, Frame, FrameError, IdentifyConfig, IdentifyResponse, ServerError};

/// nsqd's default `--max-rdy-count`, assumed when the server does not negotiate.
pub(crate) const DEFAULT_MAX_RDY_COUNT: u32 = 2500;
/// Output a role may queue on a connection before it stops taking work from its channels:
/// enough for a few MPUBs of 200 small messages, small enough that a stalled server is
/// noticed by the write timeout rather than by memory.
pub(crate) const OUTPUT_HIGH_WATER_BYTES: usize = 256 * 1024;
/// The read buffer grows to a frame's size; this is what it starts with and reserves per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A secret for AUTH. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS client settings for nsqd's `tls_v1` upgrade.
#[derive(Clone)]
pub struct TlsSettings {
    /// rustls client configuration (roots, protocol versions).
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// Name to verify the server's certificate against; default: the host of the address.
    pub(crate) server_name: Option<String>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Trusts the webpki roots plus the certificates of `ca_file` (PEM), when given.
    pub fn new(ca_file: Option<&Path>, server_name: Option<String>) -> Result<TlsSettings, ConnectionError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectionError::TlsConfig(format!("{shown}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| ConnectionError::TlsConfig(format!("{shown}: {e}")))?;
                roots.add(cert).map_err(|e| ConnectionError::TlsConfig(format!("{shown}: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectionError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsSettings { config: Arc::new(config), server_name })
    }
}

/// What every connection is opened with.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// IDENTIFY `client_id` (nsqd's stats).
    pub client_id: String,
    /// IDENTIFY `hostname`.
    pub hostname: String,
    /// IDENTIFY `user_agent`.
    pub user_agent: String,
    /// Asked of nsqd; it drops a client silent for twice this. `None`: disabled.
    pub heartbeat_interval: Option<Duration>,
    /// Asked of nsqd; `None`: the server's `--msg-timeout`.
    pub msg_timeout: Option<Duration>,
    /// Asked of nsqd; `None`: the server's default (16 KiB).
    pub output_buffer_size: Option<u32>,
    /// Asked of nsqd; `None`: the server's default (250 ms).
    pub output_buffer_timeout: Option<Duration>,
    /// Connecting (DNS, TCP, TLS) and the whole handshake.
    pub dial_timeout: Duration,
    /// Longest silence from the server; raised to two heartbeat intervals and a bit.
    pub read_timeout: Duration,
    /// Longest time pending output may make no progress.
    pub write_timeout: Duration,
    /// Ask for TLS; `None`: plain TCP (and a clear error if the server requires TLS).
    pub tls: Option<TlsSettings>,
    /// Sent with AUTH when nsqd says `auth_required`.
    pub auth_secret: Option<Secret>,
    /// Largest frame accepted from the server.
    pub max_frame_bytes: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            client_id: "logmill".into(),
            hostname: "logmill".into(),
            user_agent: concat!("logmill/", env!("CARGO_PKG_VERSION")).into(),
            heartbeat_interval: Some(Duration::from_secs(30)),
            msg_timeout: None,
            output_buffer_size: None,
            output_buffer_timeout: None,
            dial_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            tls: None,
            auth_secret: None,
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

impl ConnectionSettings {
    fn identify(&self) -> IdentifyConfig {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        IdentifyConfig {
            client_id: self.client_id.clone(),
            hostname: self.hostname.clone(),
            user_agent: self.user_agent.clone(),
            feature_negotiation: true,
            heartbeat_interval: self.heartbeat_interval.map_or(-1, ms),
            msg_timeout: self.msg_timeout.map_or(0, ms),
            output_buffer_size: self.output_buffer_size.map_or(0, i64::from),
            output_buffer_timeout: self.output_buffer_timeout.map_or(0, ms),
            tls_v1: self.tls.is_some(),
            ..IdentifyConfig::default()
        }
    }

    /// The silence after which the connection is considered dead: the read timeout, but never
    /// less than two heartbeat intervals plus a margin (nsqd sends one per interval).
    pub(crate) fn effective_read_timeout(&self) -> Duration {
        match self.heartbeat_interval {
            Some(hb) => self.read_timeout.max(hb * 2 + Duration::from_secs(1)),
            None => self.read_timeout,
        }
    }
}

/// What nsqd granted in its IDENTIFY answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest RDY this server accepts.
    pub(crate) max_rdy_count: u32,
    /// The msg_timeout in force for this connection.
    pub(crate) msg_timeout: Duration,
    /// nsqd's `--max-msg-timeout`: the longest a message may stay in flight, TOUCHes
    /// included.
    pub(crate) max_msg_timeout: Duration,
    /// nsqd's version (empty when it did not negotiate).
    pub(crate) version: String,
    /// The connection is TLS.
    pub tls: bool,
    /// AUTH was required and accepted.
    pub authenticated: bool,
}

impl Negotiated {
    fn from_response(r: &IdentifyResponse) -> Negotiated {
        let max_rdy_count = u32::try_from(r.max_rdy_count).ok().filter(|&n| n > 0);
        let msg_timeout = u64::try_from(r.msg_timeout).ok().filter(|&n| n > 0);
        let max_msg_timeout = u64::try_from(r.max_msg_timeout).ok().filter(|&n| n > 0);
        Negotiated {
            max_rdy_count: max_rdy_count.unwrap_or(DEFAULT_MAX_RDY_COUNT),
            msg_timeout: Duration::from_millis(msg_timeout.unwrap_or(60_000)),
            // nsqd's defaults when it does not say.
            max_msg_timeout: Duration::from_millis(max_msg_timeout.unwrap_or(900_000)),
            version: r.version.clone(),
            tls: r.tls_v1,
            authenticated: false,
        }
    }
}

/// Why a connection could not be opened or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Dialing failed.
    #[error("connecting to {addr}: {source}")]
    Dial {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// Dialing plus handshake took longer than the dial timeout.
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    DialTimeout {
        /// The address.
        addr: String,
        /// The dial timeout.
        timeout: Duration,
    },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("closed by nsqd")]
    Closed,
    /// Nothing from the server, not even a heartbeat.
    #[error("nothing read for {0:?}")]
    ReadTimeout(Duration),
    /// Pending output made no progress.
    #[error("no write progress for {0:?}")]
    WriteTimeout(Duration),
    /// The server sent something that is not a frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A command could not be encoded.
    #[error("encoding a command: {0}")]
    Encode(#[from] EncodeError),
    /// An error frame that closes the connection.
    #[error("nsqd: {0}")]
    Server(ServerError),
    /// An answer the protocol does not allow at this point.
    #[error("unexpected answer from nsqd: {0}")]
    Protocol(String),
    /// The server requires TLS and TLS is not configured.
    #[error("nsqd requires TLS (set nsq.tls): {0}")]
    TlsRequired(ServerError),
    /// TLS was configured but the server did not grant it.
    #[error("TLS is configured but nsqd did not grant tls_v1 (start nsqd with --tls-cert/--tls-key)")]
    TlsNotOffered,
    /// The TLS configuration is unusable.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// nsqd requires AUTH and no secret is configured.
    #[error("nsqd requires AUTH (set nsq.auth_secret_file or NSQ_AUTH_SECRET)")]
    AuthRequired,
    /// AUTH was refused.
    #[error("AUTH refused: {0}")]
    Auth(ServerError),
}

impl ConnectionError {
    /// Whether dialing again may help; configuration errors will not go away.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectionError::TlsRequired(_)
                | ConnectionError::TlsNotOffered
                | ConnectionError::TlsConfig(_)
                | ConnectionError::AuthRequired
        )
    }
}

/// Plain TCP or TLS, one type so a connection is not generic.
enum NsqStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NsqStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NsqStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            NsqStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NsqStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NsqStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            NsqStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NsqStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            NsqStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NsqStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            NsqStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The handshake's view: the whole stream, read and written in turn.
struct Handshake {
    stream: NsqStream,
    read_buf: BytesMut,
    max_frame_bytes: usize,
}

impl Handshake {
    async fn send(&mut self, buf: &[u8]) -> Result<(), ConnectionError> {
        self.stream.write_all(buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next frame that is not a heartbeat (those are answered).
    async fn frame(&mut self) -> Result<Frame, ConnectionError> {
        loop {
            if let Some(frame) = protocol::decode_frame(&mut self.read_buf, self.max_frame_bytes)? {
                if frame.is_heartbeat() {
                    self.send(b"NOP\n").await?;
                    continue;
                }
                return Ok(frame);
            }
            self.read_buf.reserve(READ_CHUNK_BYTES);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ConnectionError::Closed);
            }
        }
    }
}

/// An open, identified connection; see the module documentation.
pub struct Connection {
    addr: String,
    rd: ReadHalf<NsqStream>,
    wr: WriteHalf<NsqStream>,
    read_buf: BytesMut,
    out: BytesMut,
    /// Written bytes not yet flushed (TLS buffers records; TCP's flush is a no-op).
    needs_flush: bool,
    max_frame_bytes: usize,
    read_timeout: Duration,
    write_timeout: Duration,
    last_read: Instant,
    last_write: Instant,
    /// When output last went from empty to pending (None while there is none).
    write_pending_since: Option<Instant>,
    negotiated: Negotiated,
    heartbeats: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("addr", &self.addr).field("negotiated", &self.negotiated).finish()
    }
}

impl Connection {
    /// Dials `addr` (`host:port`) and runs the handshake, all within the dial timeout.
    pub async fn connect(addr: &str, settings: &ConnectionSettings) -> Result<Connection, ConnectionError> {
        match tokio::time::timeout(settings.dial_timeout, Self::connect_inner(addr, settings)).await {
            Ok(result) => result,
            Err(_) => {
                Err(ConnectionError::DialTimeout { addr: addr.to_owned(), timeout: settings.dial_timeout })
            }
        }
    }

    async fn connect_inner(addr: &str, settings: &ConnectionSettings) -> Result<Connection, ConnectionError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectionError::Dial { addr: addr.to_owned(), source })?;
        // Commands are pipelined into one write already; Nagle would only delay answers.
        tcp.set_nodelay(true)?;
        let mut hs = Handshake {
            stream: NsqStream::Tcp(tcp),
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            max_frame_bytes: settings.max_frame_bytes,
        };
        let mut buf = BytesMut::with_capacity(512);
        buf.extend_from_slice(protocol::MAGIC_V2);
        protocol::encode_identify(&settings.identify(), &mut buf)?;
        hs.send(&buf).await?;
        let mut negotiated = match hs.frame().await? {
            Frame::Response(data) if data.as_ref() == protocol::OK => {
                // An nsqd without feature negotiation (before 0.2.20): its defaults hold.
                Negotiated::from_response(&IdentifyResponse::default())
            }
            Frame::Response(data) => {
                let r: IdentifyResponse = serde_json::from_slice(&data)
                    .map_err(|e| ConnectionError::Protocol(format!("IDENTIFY answer: {e}")))?;
                let mut n = Negotiated::from_response(&r);
                n.tls = false;
                if r.tls_v1 || settings.tls.is_some() {
                    let Some(tls) = settings.tls.as_ref().filter(|_| r.tls_v1) else {
                        return Err(if settings.tls.is_some() {
                            ConnectionError::TlsNotOffered
                        } else {
                            ConnectionError::Protocol("nsqd granted TLS that was not asked for".into())
                        });
                    };
                    hs = upgrade_tls(hs, addr, tls).await?;
                    n.tls = true;
                }
                if r.auth_required {
                    let Some(secret) = &settings.auth_secret else {
                        return Err(ConnectionError::AuthRequired);
                    };
                    let mut b = BytesMut::new();
                    protocol::encode_auth(&secret.0, &mut b)?;
                    hs.send(&b).await?;
                    match hs.frame().await? {
                        Frame::Response(_) => n.authenticated = true,
                        // With --tls-required nsqd refuses a plain AUTH by its TLS policy
                        // (`E_INVALID cannot AUTH in current state (TLS required)`): that is the
                        // error to report, and it is permanent.
                        Frame::Error(e) => {
                            return Err(match classify_handshake_error(e) {
                                ConnectionError::Server(e) => ConnectionError::Auth(e),
                                other => other,
                            })
                        }
                        Frame::Message(_) => {
                            return Err(ConnectionError::Protocol("message before AUTH".into()))
                        }
                    }
                }
                n
            }
            Frame::Error(e) => return Err(classify_handshake_error(e)),
            Frame::Message(_) => return Err(ConnectionError::Protocol("message before IDENTIFY".into())),
        };
        if negotiated.version.is_empty() {
            negotiated.version = "unknown".into();
        }
        let Handshake { stream, read_buf, .. } = hs;
        let (rd, wr) = tokio::io::split(stream);
        let now = Instant::now();
        Ok(Connection {
            addr: addr.to_owned(),
            rd,
            wr,
            read_buf,
            out: BytesMut::with_capacity(64 * 1024),
            needs_flush: false,
            max_frame_bytes: settings.max_frame_bytes,
            read_timeout: settings.effective_read_timeout(),
            write_timeout: settings.write_timeout,
            last_read: now,
            last_write: now,
            write_pending_since: None,
            negotiated,
            heartbeats: 0,
        })
    }

    /// The server's address as dialed.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// What the server granted.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Heartbeats answered so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats
    }

    /// The output buffer: encode commands into it; [`Connection::io`] writes them.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Whether a role may encode more: the output is below [`OUTPUT_HIGH_WATER_BYTES`].
    pub(crate) fn has_room(&self) -> bool {
        self.out.len() < OUTPUT_HIGH_WATER_BYTES
    }

    /// One step of the pump: reads what arrived or writes some pending output, whichever is
    /// possible first; fails on a closed socket or a timeout. Cancel-safe: a read or write
    /// that did not complete did not happen, so it can sit in a `select!`.
    pub async fn io(&mut self) -> Result<(), ConnectionError> {
        let writing = !self.out.is_empty() || self.needs_flush;
        let read_deadline = self.last_read + self.read_timeout;
        let deadline = if writing {
            let pending_since = *self.write_pending_since.get_or_insert_with(Instant::now);
            read_deadline.min(write_deadline(pending_since, self.last_write, self.write_timeout))
        } else {
            self.write_pending_since = None;
            read_deadline
        };
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK_BYTES / 4 {
            self.read_buf.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            // I/O that is ready wins over a deadline that passed meanwhile.
            biased;
            read = self.rd.read_buf(&mut self.read_buf) => {
                if read? == 0 {
                    return Err(ConnectionError::Closed);
                }
                self.last_read = Instant::now();
            }
            written = write_or_flush(&mut self.wr, &self.out), if writing => {
                match written? {
                    Some(n) => {
                        self.out.advance(n);
                        self.needs_flush = true;
                    }
                    None => self.needs_flush = false,
                }
                self.last_write = Instant::now();
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if now >= read_deadline {
                    return Err(ConnectionError::ReadTimeout(self.read_timeout));
                }
                return Err(ConnectionError::WriteTimeout(self.write_timeout));
            }
        }
        Ok(())
    }

    /// The next decoded frame, if a whole one is buffered. Heartbeats are answered (NOP into
    /// the output) and skipped; a fatal error frame is returned as a frame, the role decides.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            match protocol::decode_frame(&mut self.read_buf, self.max_frame_bytes)? {
                Some(frame) if frame.is_heartbeat() => {
                    protocol::encode_nop(&mut self.out);
                    self.heartbeats += 1;
                }
                other => return Ok(other),
            }
        }
    }

    /// Writes all pending output, within the write timeout.
    pub(crate) async fn flush(&mut self) -> Result<(), ConnectionError> {
        let timeout = self.write_timeout;
        let out = &mut self.out;
        let wr = &mut self.wr;
        let work = async {
            wr.write_all(out).await?;
            out.clear();
            wr.flush().await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnectionError::WriteTimeout(timeout)),
        }
    }

    /// Flushes what is pending and closes the socket (best effort, bounded by the write
    /// timeout).
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.wr.shutdown()).await;
    }
}

/// When pending output must have made progress by: `write_timeout` after it became pending or
/// last made progress, whichever is later. Measured from the last write alone, it would
/// already have passed when a command is queued after a quiet spell, and a healthy connection
/// would be dropped as soon as its next write had to wait.
fn write_deadline(pending_since: Instant, last_write: Instant, write_timeout: Duration) -> Instant {
    pending_since.max(last_write) + write_timeout
}

/// Writes some of `out` (`Some(n)`), or, with nothing pending, flushes (`None`).
async fn write_or_flush(wr: &mut WriteHalf<NsqStream>, out: &BytesMut) -> io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await?;
        return Ok(None);
    }
    match wr.write(out).await? {
        0 => Err(io::Error::new(io::ErrorKind::WriteZero, "nsqd stopped reading")),
        n => Ok(Some(n)),
    }
}

async fn upgrade_tls(hs: Handshake, addr: &str, tls: &TlsSettings) -> Result<Handshake, ConnectionError> {
    let NsqStream::Tcp(tcp) = hs.stream else {
        return Err(ConnectionError::Protocol("TLS granted twice".into()));
    };
    let host = tls.server_name.clone().unwrap_or_else(|| host_of(addr).to_owned());
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| ConnectionError::TlsConfig(format!("server name `{host}`: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .map_err(ConnectionError::Tls)?;
    let mut hs = Handshake {
        stream: NsqStream::Tls(Box::new(stream)),
        read_buf: hs.read_buf,
        max_frame_bytes: hs.max_frame_bytes,
    };
    // nsqd confirms the upgrade with an OK over TLS.
    match hs.frame().await? {
        f if f.is_ok() => Ok(hs),
        Frame::Error(e) => Err(ConnectionError::Server(e)),
        other => Err(ConnectionError::Protocol(format!("after TLS upgrade: {other:?}"))),
    }
}

fn classify_handshake_error(e: ServerError) -> ConnectionError {
    if String::from_utf8_lossy(&e.text).contains("TLS") {
        ConnectionError::TlsRequired(e)
    } else {
        ConnectionError::Server(e)
    }
}

/// Maps an error frame received after the handshake: a server that requires TLS refuses
/// every command of a plain connection with `E_INVALID … TLS …`.
pub fn classify_server_error(e: ServerError) -> ConnectionError {
    classify_handshake_error(e)
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `addr` looks like `host:port`.
pub(crate) fn valid_address(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(valid_address("127.0.0.1:4150"));
        assert!(valid_address("nsqd:4150"));
        assert!(valid_address("[::1]:4150"));
        assert!(!valid_address("nsqd"));
        assert!(!valid_address(":4150"));
        assert!(!valid_address("nsqd:0"));
        assert!(!valid_address("nsqd:http"));
        assert_eq!(host_of("[::1]:4150"), "::1");
        assert_eq!(host_of("nsqd.local:4150"), "nsqd.local");
    }

    #[test]
    fn the_write_deadline_runs_from_when_output_became_pending_or_last_progressed() {
        let timeout = Duration::from_millis(50);
        let t0 = Instant::now();
        // A quiet spell of 10 s after the last write, then a command is queued: it has the
        // whole timeout from now, not a deadline 9.95 s in the past.
        let queued = t0 + Duration::from_secs(10);
        assert_eq!(write_deadline(queued, t0, timeout), queued + timeout);
        // Progress while it is pending pushes the deadline on.
        let progress = queued + Duration::from_millis(30);
        assert_eq!(write_deadline(queued, progress, timeout), progress + timeout);
    }

    #[test]
    fn identify_asks_for_what_is_configured() {
        let s = ConnectionSettings {
            heartbeat_interval: None,
            msg_timeout: Some(Duration::from_secs(90)),
            ..ConnectionSettings::default()
        };
        let id = s.identify();
        assert!(id.feature_negotiation);
        assert_eq!(id.heartbeat_interval, -1);
        assert_eq!(id.msg_timeout, 90_000);
        assert!(!id.tls_v1);
        assert_eq!(ConnectionSettings::default().effective_read_timeout(), Duration::from_secs(61));
        let r = IdentifyResponse { max_rdy_count: 0, msg_timeout: 0, ..IdentifyResponse::default() };
        let n = Negotiated::from_response(&r);
        assert_eq!((n.max_rdy_count, n.msg_timeout), (DEFAULT_MAX_RDY_COUNT, Duration::from_secs(60)));
    }
}
