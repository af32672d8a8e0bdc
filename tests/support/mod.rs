//! Shared test support for `mod support;`. Each test binary uses a part of it, hence the
//! `dead_code` allowance in the files.
#![allow(dead_code)]

pub mod nsq_broker;
pub mod nsqd;

use std::time::Duration;

/// Polls `condition` every 5 ms until it holds, panicking with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < until, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] for a condition that has to await (an HTTP request to nsqd's `/stats`,
/// say): polls it every 10 ms until it holds, panicking with `what` after `timeout`.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(tokio::time::Instant::now() < until, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
