//! An in-memory queue in NSQ's place (`logmill run`): the agent's [`Publish`] on one side, the
//! core's [`Inbound`] messages on the other. A message is acknowledged to the agent once the
//! core finished it (everything derived from it written); one the core requeues is sent again
//! after its delay, as nsqd would, so the agent's checkpoint never passes what was not written.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::core::{Inbound, OneshotAck, Settled};
use super::ledger::HoldLimits;
use crate::agent::sink::{Ack, Publish};
use crate::derive::TopicKind;
use crate::nsq::producer::PublishError;

/// The agent's end of the queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MemoryQueue {
    core: mpsc::Sender<Inbound<OneshotAck>>,
    metric_topic: String,
}

impl MemoryQueue {
    /// Messages published to `metric_topic` are line protocol; any other topic is `logs`.
    pub(crate) fn new(core: mpsc::Sender<Inbound<OneshotAck>>, metric_topic: &str) -> Self {
        Self { core, metric_topic: metric_topic.to_owned() }
    }

    fn kind(&self, topic: &str) -> TopicKind {
        if topic == self.metric_topic {
            TopicKind::Metrics
        } else {
            TopicKind::Logs
        }
    }

    /// Hands `body` to the core; the receiver answers what became of it.
    async fn send(
        core: &mpsc::Sender<Inbound<OneshotAck>>,
        topic: TopicKind,
        body: Bytes,
        attempts: u16,
    ) -> Result<oneshot::Receiver<Settled>, PublishError> {
        let (ack, settled) = OneshotAck::new();
        let inbound = Inbound {
            topic,
            body,
            timestamp_ns: crate::timefmt::now_ns(),
            attempts,
            id: None,
            limits: HoldLimits { timeout: None, max_hold: None },
            capacity: None,
            ack,
        };
        core.send(inbound).await.map_err(|_| PublishError::Stopped)?;
        Ok(settled)
    }
}

impl Publish for MemoryQueue {
    async fn submit(&self, topic: &str, bodies: Vec<Bytes>) -> Result<Ack, PublishError> {
        let kind = self.kind(topic);
        let mut waiting = Vec::with_capacity(bodies.len());
        for body in bodies {
            let settled = Self::send(&self.core, kind, body.clone(), 1).await?;
            waiting.push((body, settled));
        }
        let core = self.core.clone();
        Ok(Box::pin(async move {
            for (body, mut settled) in waiting {
                let mut attempts = 1;
                loop {
                    match settled.await {
                        Ok(Settled::Finished) => break,
                        Ok(Settled::Requeued { delay }) => {
                            tokio::time::sleep(delay.min(Duration::from_secs(60))).await;
                            attempts += 1;
                            settled = Self::send(&core, kind, body.clone(), attempts).await?;
                        }
                        // The core stopped holding it unanswered: shutdown.
                        Err(_) => return Err(PublishError::Stopped),
                    }
                }
            }
            Ok(())
        }))
    }
}
