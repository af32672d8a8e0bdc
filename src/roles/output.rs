//! Where a one-shot role's line protocol goes: stdout, or InfluxDB through the writer.

use std::io::Write;

use bytes::BytesMut;

use crate::influx::writer::{InfluxWriter, Outcome, Pending};
use crate::telemetry::Telemetry;

/// What InfluxDB made of everything a sink submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySummary {
    pub submitted: u64,
    pub written: u64,
    /// Points InfluxDB refused inside partial writes.
    pub dropped: u64,
    pub rejected: u64,
    pub aborted: u64,
    /// The first refusal's message, for the user.
    pub first_error: Option<String>,
}

impl DeliverySummary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "  influx            {} points submitted, {} written, {} dropped by partial writes, {} rejected, {} not delivered\n",
            self.submitted, self.written, self.dropped, self.rejected, self.aborted
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!("  influx error      {e}\n"));
        }
        s
    }

    /// Every point is either stored or refused for a reason InfluxDB gave.
    pub fn complete(&self) -> bool {
        self.rejected == 0 && self.aborted == 0
    }
}

/// A [`Write`] that hands complete lines to the InfluxDB writer, from a blocking thread (the
/// replay loop); each submission's answer is collected and awaited by [`InfluxSink::finish`].
pub struct InfluxSink {
    writer: InfluxWriter,
    /// The registry the writer counts into.
    telemetry: Telemetry,
    runtime: tokio::runtime::Handle,
    buf: BytesMut,
    submit_bytes: usize,
    pending: Vec<(u64, Pending)>,
}

impl InfluxSink {
    /// `submit_bytes`: how much line protocol goes into one submission (a batch's worth).
    pub fn new(
        writer: InfluxWriter,
        telemetry: Telemetry,
        runtime: tokio::runtime::Handle,
        submit_bytes: usize,
    ) -> Self {
        Self {
            writer,
            telemetry,
            runtime,
            buf: BytesMut::new(),
            submit_bytes: submit_bytes.max(1),
            pending: Vec::new(),
        }
    }

    fn submit_complete_lines(&mut self) -> std::io::Result<()> {
        let Some(last) = memchr::memrchr(b'\n', &self.buf) else { return Ok(()) };
        let body = self.buf.split_to(last + 1).freeze();
        let points = memchr::memchr_iter(b'\n', &body).count();
        let pending =
            self.runtime.block_on(self.writer.submit(body, points)).map_err(std::io::Error::other)?;
        self.pending.push((points as u64, pending));
        Ok(())
    }

    /// Waits for every submission's answer. Dropping the sink's writer handle here lets the
    /// writer task end once it has answered everything.
    pub async fn finish(mut self) -> DeliverySummary {
        // What was written after the last flush: complete lines are submitted; a last line
        // without its `\n` is ended with one (line protocol lines are whole by construction).
        if !self.buf.is_empty() && !self.buf.ends_with(b"\n") {
            self.buf.extend_from_slice(b"\n");
        }
        let mut unsubmitted = 0;
        if let Some(last) = memchr::memrchr(b'\n', &self.buf) {
            let body = self.buf.split_to(last + 1).freeze();
            let points = memchr::memchr_iter(b'\n', &body).count();
            match self.writer.submit(body, points).await {
                Ok(p) => self.pending.push((points as u64, p)),
                Err(_) => unsubmitted = points as u64,
            }
        }
        let Self { writer, pending, telemetry, .. } = self;
        drop(writer);
        let mut summary =
            DeliverySummary { submitted: unsubmitted, aborted: unsubmitted, ..Default::default() };
        for (points, p) in pending {
            summary.submitted += points;
            match p.await {
                Outcome::Written | Outcome::Aborted => {}
                Outcome::PartiallyWritten { message, .. } | Outcome::Rejected { message } => {
                    summary.first_error.get_or_insert(message);
                }
            }
        }
        // A batch holds several submissions and parts of a split batch end differently: the
        // writer's own counters have the exact count of each ending (this sink is their only
        // writer).
        let count = |name: &'static str| telemetry.value(name, &[]).unwrap_or(0);
        summary.written = count("logmill_influx_points_written_total");
        summary.dropped = count("logmill_influx_points_dropped_total");
        summary.rejected = count("logmill_influx_points_rejected_total");
        summary.aborted += count("logmill_influx_points_aborted_total");
        summary
    }
}

impl Write for InfluxSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.submit_bytes {
            self.submit_complete_lines()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.submit_complete_lines()
    }
}
