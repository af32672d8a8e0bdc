//! Cancellation and drain order.
//!
//! One [`CancellationToken`] says "stop reading"; every task is spawned on one
//! [`TaskTracker`]. On SIGINT/SIGTERM the token fires, readers stop taking input, the tasks
//! downstream drain what is already in their (bounded) channels, checkpoints are written after
//! the last acknowledgement, and `main` returns once the tracker is empty.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub(crate) struct Shutdown {
    pub(crate) token: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Fires the token on the first SIGINT or SIGTERM (Kubernetes sends SIGTERM, then SIGKILL
    /// after the grace period).
    pub(crate) fn cancel_on_signals(&self) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT: stopping"),
                _ = term => tracing::info!("SIGTERM: stopping"),
                _ = token.cancelled() => return,
            }
            token.cancel();
        });
    }

    /// Closes the tracker and waits for every task, at most `grace`. Returns whether all ended.
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_tasks_after_cancel() {
        let s = Shutdown::new();
        let token = s.token.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.tracker.spawn(async move {
            token.cancelled().await;
            // Work done after the cancel (the drain) still completes before drain() returns.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send("drained");
        });
        s.token.cancel();
        assert!(s.drain(Duration::from_secs(5)).await);
        assert_eq!(rx.await.unwrap(), "drained");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_grace() {
        let s = Shutdown::new();
        s.tracker.spawn(std::future::pending::<()>());
        assert!(!s.drain(Duration::from_secs(1)).await);
    }
}
