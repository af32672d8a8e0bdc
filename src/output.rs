//! The one output boundary: every role hands line protocol to an [`Output`] with
//! `submit(body, points)` and learns each submission's fate as an [`Outcome`]. Checkpoints and
//! FINs move from outcomes, and summaries add them up; nothing reads counters back by name.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

pub(crate) use crate::influx::writer::Outcome;
use crate::influx::writer::{self, InfluxWriter, WriterError};
use crate::nsq::producer::{Producer, PublishAck, PublishError};

/// Where line protocol goes.
#[derive(Clone)]
pub enum Output {
    /// Written to stdout at once; a full pipe makes the caller wait.
    Stdout,
    /// InfluxDB, through the batching, retrying writer.
    Influx(InfluxWriter),
    /// Published to an NSQ topic (the `metrics` topic of the old stack), one message per
    /// submission; `written` means nsqd answered `OK`.
    Nsq { producer: Producer, topic: String },
    /// Unit tests: each submission is handed to the test, which answers it when it likes.
    #[cfg(test)]
    Test(tokio::sync::mpsc::UnboundedSender<TestSubmission>),
}

/// A submission to [`Output::Test`].
#[cfg(test)]
pub struct TestSubmission {
    pub(crate) body: Bytes,
    pub(crate) points: usize,
    pub(crate) answer: tokio::sync::oneshot::Sender<Outcome>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(transparent)]
    Influx(#[from] WriterError),
    #[error("publishing: {0}")]
    Nsq(#[from] PublishError),
}

impl Output {
    /// Hands over `points` complete lines of line protocol (each ending in `\n`). Waits while
    /// the output is full (the back-pressure on the caller); the returned [`Pending`] resolves
    /// to what became of them.
    pub(crate) async fn submit(&self, body: Bytes, points: usize) -> Result<Pending, OutputError> {
        self.submit_with(body, points, false).await
    }

    /// [`Output::submit`], sent without waiting to be batched with more (InfluxDB's writer
    /// sends it as soon as it can): someone waits on its answer.
    pub(crate) async fn submit_urgent(&self, body: Bytes, points: usize) -> Result<Pending, OutputError> {
        self.submit_with(body, points, true).await
    }

    async fn submit_with(&self, body: Bytes, points: usize, urgent: bool) -> Result<Pending, OutputError> {
        let pending = match self {
            Output::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&body)?;
                stdout.flush()?;
                Inner::Ready(Some(Outcome::written(points as u64)))
            }
            Output::Influx(writer) if urgent => Inner::Influx(writer.submit_urgent(body, points).await?),
            Output::Influx(writer) => Inner::Influx(writer.submit(body, points).await?),
            Output::Nsq { producer, topic } => Inner::Nsq(producer.submit(topic, body).await?, points as u64),
            #[cfg(test)]
            Output::Test(tx) => {
                let (answer, rx) = tokio::sync::oneshot::channel();
                // A test that dropped its receiver answers nothing: aborted.
                let _ = tx.send(TestSubmission { body, points, answer });
                Inner::Test(rx, points as u64)
            }
        };
        Ok(Pending(pending))
    }
}

/// The answer to one submission.
pub struct Pending(Inner);

enum Inner {
    Ready(Option<Outcome>),
    Influx(writer::Pending),
    Nsq(PublishAck, u64),
    #[cfg(test)]
    Test(tokio::sync::oneshot::Receiver<Outcome>, u64),
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.0 {
            Inner::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or_default()),
            Inner::Influx(pending) => Pin::new(pending).poll(cx),
            Inner::Nsq(ack, points) => Pin::new(ack).poll(cx).map(|answer| match answer {
                Ok(()) => Outcome::written(*points),
                // Not known to be stored: sent again after a restart.
                Err(PublishError::Stopped) => Outcome::aborted(*points),
                Err(e) => Outcome::rejected(*points, e.to_string()),
            }),
            #[cfg(test)]
            Inner::Test(rx, points) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Outcome::aborted(*points))),
        }
    }
}

/// Every submission's outcome added up, for a one-shot role's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeliverySummary {
    pub(crate) submitted: u64,
    pub(crate) outcome: Outcome,
}

impl DeliverySummary {
    pub(crate) fn add(&mut self, points: u64, outcome: &Outcome) {
        self.submitted += points;
        self.outcome.add(outcome);
    }

    /// Every point is either stored or was refused for a reason the output gave.
    pub(crate) fn complete(&self) -> bool {
        self.outcome.rejected == 0 && self.outcome.aborted == 0
    }

    pub(crate) fn render(&self, output: &str) -> String {
        let o = &self.outcome;
        let mut s = format!(
            "  {output:<17} {} points submitted, {} written, {} dropped by partial writes, {} rejected, {} not delivered\n",
            self.submitted, o.written, o.dropped, o.rejected, o.aborted
        );
        if let Some(e) = &o.error {
            s.push_str(&format!("  {:<17} {e}\n", format!("{output} error")));
        }
        s
    }
}
