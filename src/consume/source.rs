//! NSQ as the core's source: each topic's [`Consumer`] deliveries become [`Inbound`]
//! messages, and a [`Delivery`] is their acknowledgement handle (FIN, REQ, TOUCH on the
//! connection it came from).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::core::{Ack, Inbound};
use super::ledger::HoldLimits;
use crate::derive::TopicKind;
use crate::nsq::consumer::{Consumer, Delivery};

impl Ack for Delivery {
    fn finish(self) -> impl Future<Output = ()> + Send + 'static {
        Delivery::finish(self)
    }

    fn requeue(self, delay: Duration, backoff: bool) -> impl Future<Output = ()> + Send + 'static {
        async move {
            if backoff {
                Delivery::requeue(self, delay).await;
            } else {
                self.requeue_without_backoff(delay).await;
            }
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
