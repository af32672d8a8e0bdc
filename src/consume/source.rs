//! NSQ as the core's source: each topic's [`Consumer`] deliveries become [`Inbound`]
//! messages, and a [`Delivery`] is their acknowledgement handle (FIN, REQ, TOUCH on the
//! connection it came from).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::core::{Ack, Inbound};
use super::ledger::HoldLimits;
use crate::derive::TopicKind;
use crate::nsq::consumer::{fixed_addresses, Consumer, Delivery};

impl Ack for Delivery {
    fn finish(self) -> impl Future<Output = ()> + Send + 'static {
        Delivery::finish(self)
    }

    async fn requeue(self, delay: Duration, backoff: bool) {
        if backoff {
            Delivery::requeue(self, delay).await;
        } else {
            self.requeue_without_backoff(delay).await;
        }
    }

    fn touch(&self) -> impl Future<Output = ()> + Send + 'static {
        self.touch_later()
    }
}

/// Forwards `topic`'s deliveries to the core until the consumer stops (or the core is gone:
/// a delivery dropped unsent is requeued by its `Drop`). The body is taken out of each
/// delivery, so that a held message costs its handle only.
pub async fn forward(
    topic: TopicKind,
    consumer: Consumer,
    mut deliveries: mpsc::Receiver<Delivery>,
    core: mpsc::Sender<Inbound<Delivery>>,
) {
    while let Some(mut d) = deliveries.recv().await {
        let body = d.take_body();
        let inbound = Inbound {
            topic,
            body,
            timestamp_ns: d.message().timestamp_ns,
            attempts: d.attempts(),
            id: Some(d.id().0),
            limits: HoldLimits { timeout: Some(d.msg_timeout()), max_hold: Some(d.max_msg_timeout()) },
            capacity: Some(consumer.capacity()),
            ack: d,
        };
        if core.send(inbound).await.is_err() {
            break;
        }
    }
}

/// The nsqd to consume from: the fixed addresses together with what nsqlookupd discovery
/// finds (when there is discovery), as one set that follows discovery's changes.
pub fn nsqd_addresses(
    fixed: &[String],
    discovered: Option<watch::Receiver<BTreeSet<String>>>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> watch::Receiver<BTreeSet<String>> {
    let fixed: BTreeSet<String> = fixed.iter().cloned().collect();
    let Some(mut discovered) = discovered else { return fixed_addresses(fixed) };
    let union = move |d: &BTreeSet<String>| fixed.union(d).cloned().collect::<BTreeSet<String>>();
    let (tx, rx) = watch::channel(union(&discovered.borrow_and_update()));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                changed = discovered.changed() => {
                    if changed.is_err() {
                        // Discovery ended: the set stays as it was.
                        return;
                    }
                    tx.send_replace(union(&discovered.borrow_and_update()));
                }
                _ = tx.closed() => return,
                _ = cancel.cancelled() => return,
            }
        }
    });
    rx
}
