//! Capped exponential backoff with jitter, for everything that retries: NSQ reconnects and
//! handler backoff, InfluxDB write retries. Pure: the caller sleeps.

use std::time::Duration;

/// Capped exponential backoff with jitter: the `n`th consecutive failure waits
/// `min(initial × 2ⁿ, max)`, then ±25 % (still capped at `max`), so many clients that lost the
/// same server do not come back in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff whose jitter is seeded by `seed` (any value; zero is fine).
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { initial, max: max.max(initial), failures: 0, rng: seed | 1 }
    }

    /// A backoff with a random seed, so that clients started together do not retry in step.
    pub(crate) fn random(initial: Duration, max: Duration) -> Backoff {
        Backoff::new(initial, max, random_u64())
    }

    /// The wait after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let unit = self.next_unit();
        let d = Self::delay(self.initial, self.max, self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    #[cfg(test)]
    fn failures(&self) -> u32 {
        self.failures
    }

    /// The pure rule: `failures` earlier failures, `unit` uniform in [0, 1).
    pub(crate) fn delay(initial: Duration, max: Duration, failures: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(failures.min(31));
        let base = initial.saturating_mul(factor).min(max);
        let jitter = 0.75 + 0.5 * unit.clamp(0.0, 1.0);
        base.mul_f64(jitter).min(max)
    }

    fn next_unit(&mut self) -> f64 {
        // xorshift64*: jitter needs no more than this, and no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `interval` spread over a window `jitter × interval` wide around it; `unit` in `[0, 1)`.
pub(crate) fn jittered(interval: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    interval.mul_f64(1.0 - jitter / 2.0 + jitter * unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)`: the one source of randomness for every jitter.
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is randomly keyed: enough randomness for jitter without a crate.
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(Backoff::delay(i, m, 0, 0.5), Duration::from_millis(100));
        assert_eq!(Backoff::delay(i, m, 1, 0.5), Duration::from_millis(200));
        assert_eq!(Backoff::delay(i, m, 3, 0.5), Duration::from_millis(800));
        assert_eq!(Backoff::delay(i, m, 0, 0.0), Duration::from_millis(75));
        assert_eq!(Backoff::delay(i, m, 0, 1.0), Duration::from_millis(125));
        assert_eq!(Backoff::delay(i, m, 10, 1.0), m, "capped, jitter included");
        assert_eq!(Backoff::delay(i, m, u32::MAX, 0.0), m.mul_f64(0.75));
        let mut b = Backoff::new(i, m, 42);
        let mut last = Duration::ZERO;
        for n in 0..20 {
            let d = b.next_delay();
            assert!(d <= m);
            if n < 5 {
                assert!(d >= Backoff::delay(i, m, n, 0.0) && d <= Backoff::delay(i, m, n, 1.0));
                assert!(d > last);
            }
            last = d;
        }
        assert_eq!(b.failures(), 20);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn jitter_window() {
        let i = Duration::from_secs(60);
        assert_eq!(jittered(i, 0.3, 0.0), Duration::from_secs(51));
        assert_eq!(jittered(i, 0.3, 0.5), i);
        assert!(jittered(i, 0.3, 0.999_999) < Duration::from_secs(69));
        assert_eq!(jittered(i, 0.0, 0.7), i);
        assert_eq!(jittered(i, f64::NAN, 0.7), i);
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
