//! The consumer's one task that talks to the outputs: it hands line protocol to the
//! [`Output`] (InfluxDB) and dead letters to their sink, and reports each submission's answer
//! back. It is the only place that may wait on the writer's back-pressure, so the consumer's
//! own task never does: it keeps touching held messages while InfluxDB is slow.

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::SubmissionId;
use crate::derive::{DeadLetters, TopicKind};
use crate::output::{Outcome, Output};

/// Where invalid input goes, besides the counters and the log.
#[derive(Clone, Default)]
pub enum DeadLetterSink {
    /// Counted and logged only.
    #[default]
    None,
    /// Appended to a file, one JSON object per invalid line (or message).
    File(PathBuf),
    /// Published to an NSQ topic, one message per message that had invalid content: its
    /// invalid lines, or the whole body of a `logs` message that is not JSON.
    Topic(Output),
}

/// A message's invalid content, for the sink.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) topic: TopicKind,
    pub(crate) nsq_id: Option<[u8; 16]>,
    pub(crate) timestamp_ns: i64,
    pub(crate) content: DeadLetters,
}

impl DeadLetter {
    /// The file's records: `{"topic":…,"id":…,"timestamp":…,"reason":…,"line":…}` per piece.
    fn json_lines(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (reason, range) in &self.content.entries {
            let piece = self.content.bytes.get(range.clone()).unwrap_or_default();
            let record = serde_json::json!({
                "topic": self.topic.as_str(),
                "id": self.nsq_id.map(|id| String::from_utf8_lossy(&id).into_owned()),
                "timestamp": self.timestamp_ns,
                "reason": reason,
                "line": String::from_utf8_lossy(piece),
            });
            // Serializing a `Value` into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &record);
            out.push(b'\n');
        }
        out
    }

    /// The topic's message: the invalid pieces, a line each.
    fn body(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.content.bytes.len() + self.content.entries.len());
        for (_, range) in &self.content.entries {
            out.extend_from_slice(self.content.bytes.get(range.clone()).unwrap_or_default());
            out.extend_from_slice(b"\n");
        }
        out.freeze()
    }
}

/// Work for the task.
pub(crate) enum Job {
    /// Line protocol for InfluxDB; `id` when someone waits for the answer; `urgent` to be
    /// sent at once rather than batched with what follows.
    Points {
        id: Option<SubmissionId>,
        body: Bytes,
        points: usize,
        urgent: bool,
    },
    Dead {
        id: SubmissionId,
        letter: DeadLetter,
    },
}

impl Job {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Job::Points { body, .. } => body.len(),
            Job::Dead { letter, .. } => letter.content.bytes.len(),
        }
    }
}

/// What became of a job.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) id: Option<SubmissionId>,
    /// Stored as well as it ever will be (written, or refused for good): acknowledge.
    pub(crate) durable: bool,
    pub(crate) dead_letter: bool,
    pub(crate) outcome: Outcome,
    /// From the hand-over to the answer.
    pub(crate) latency: Duration,
    /// The job's [`Job::bytes`], no longer waiting.
    pub(crate) bytes: usize,
}

/// Runs until `jobs` closes and every job is answered.
pub(crate) async fn run(
    mut jobs: mpsc::Receiver<Job>,
    output: Output,
    sink: DeadLetterSink,
    answers: mpsc::Sender<Answer>,
) {
    let mut waiting: JoinSet<Answer> = JoinSet::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            biased;
            Some(done) = waiting.join_next(), if !waiting.is_empty() => {
                if let Ok(answer) = done {
                    // The consumer's task is gone only when it has stopped caring.
                    let _ = answers.send(answer).await;
                }
            }
            job = jobs.recv(), if open => match job.map(|j| (j.bytes(), j)) {
                None => open = false,
                Some((bytes, Job::Points { id, body, points, urgent })) => {
                    let started = Instant::now();
                    let submitted =
                        if urgent { output.submit_urgent(body, points).await } else { output.submit(body, points).await };
                    match submitted {
                        Ok(pending) => {
                            waiting.spawn(async move {
                                let outcome = pending.await;
                                let durable = outcome.is_final();
                                Answer { id, durable, dead_letter: false, outcome, latency: started.elapsed(), bytes }
                            });
                        }
                        Err(error) => {
                            tracing::warn!(%error, "output closed; points not written");
                            let outcome = Outcome::aborted(points as u64);
                            let answer = Answer { id, durable: false, dead_letter: false, outcome, latency: started.elapsed(), bytes };
                            let _ = answers.send(answer).await;
                        }
                    }
                }
                Some((bytes, Job::Dead { id, letter })) => {
                    let started = Instant::now();
                    let stored = match &sink {
                        DeadLetterSink::None => true,
                        DeadLetterSink::File(path) => write_file(&mut file, path, &letter.json_lines()).await,
                        DeadLetterSink::Topic(out) => match out.submit(letter.body(), 1).await {
                            Ok(pending) => pending.await.is_final(),
                            Err(_) => false,
                        },
                    };
                    // A dead letter that cannot be stored is counted and logged, and its message
                    // finished all the same: invalid input must never block the channel.
                    let outcome = if stored { Outcome::written(1) } else { Outcome::rejected(1, "dead letter not stored") };
                    let answer =
                        Answer { id: Some(id), durable: true, dead_letter: true, outcome, latency: started.elapsed(), bytes };
                    let _ = answers.send(answer).await;
                }
            },
        }
    }
}

/// Appends to the dead-letter file (opened on first use, reopened after an error).
async fn write_file(file: &mut Option<tokio::fs::File>, path: &PathBuf, bytes: &[u8]) -> bool {
    if file.is_none() {
        match tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
            Ok(f) => *file = Some(f),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot open the dead-letter file");
                return false;
            }
        }
    }
    let Some(f) = file.as_mut() else { return false };
    match async {
        f.write_all(bytes).await?;
        f.flush().await
    }
    .await
    {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot write the dead-letter file");
            *file = None;
            false
        }
    }
}
