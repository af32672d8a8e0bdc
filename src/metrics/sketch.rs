//! A quantile sketch with a relative-error guarantee (the DDSketch idea: logarithmic buckets).
//!
//! Every positive value `v` lands in bucket `ceil(log_γ v)` with `γ = (1+α)/(1-α)`; answering
//! with the bucket's midpoint `2γ^i/(γ+1)` is within `α` of every value in it. With
//! `α = 0.0075` a percentile is within 0.75 % of the exact nearest-rank value, under the 1 %
//! the dashboards are promised, in about 300 buckets per decade of latency.

const ALPHA: f64 = 0.0075;
/// Values at or below this are counted as zero: nginx times have millisecond resolution, so
/// `0.000` is common and must come back as exactly 0.
const MIN_POSITIVE: f64 = 1e-9;
/// Larger values share the top bucket (their percentile is then clamped to the exact max).
const MAX_BUCKETED: f64 = 1e6;

#[derive(Debug, Clone, Default)]
pub(crate) struct Sketch {
    zeros: u64,
    /// Bucket index of `counts[0]`.
    offset: i32,
    counts: Vec<u32>,
    total: u64,
    min: f64,
    max: f64,
}

fn ln_gamma() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

impl Sketch {
    pub(crate) fn insert(&mut self, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            return;
        }
        if self.total == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.total += 1;
        if v <= MIN_POSITIVE {
            self.zeros += 1;
            return;
        }
        // Buckets span 1 ns to MAX_BUCKETED (11.6 days) at most, about 2,700 of them, so a series
        // fed extreme values cannot grow without bound; min and max stay exact.
        let index = (v.min(MAX_BUCKETED).ln() / ln_gamma()).ceil() as i32;
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
        } else if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        } else if index - self.offset >= self.counts.len() as i32 {
            self.counts.resize((index - self.offset) as usize + 1, 0);
        }
        let slot = &mut self.counts[(index - self.offset) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Takes back a value inserted before: it no longer counts in any quantile. `min` and
    /// `max` stay as they were (they cannot be recomputed without every value); quantiles are
    /// clamped to them, so they may still answer a removed extreme.
    pub(crate) fn remove(&mut self, v: f64) {
        if !(v.is_finite() && v >= 0.0) || self.total == 0 {
            return;
        }
        if v <= MIN_POSITIVE {
            if self.zeros > 0 {
                self.zeros -= 1;
                self.total -= 1;
            }
            return;
        }
        let index = (v.min(MAX_BUCKETED).ln() / ln_gamma()).ceil() as i32;
        let slot = usize::try_from(index - self.offset).ok().and_then(|i| self.counts.get_mut(i));
        if let Some(slot) = slot.filter(|c| **c > 0) {
            *slot -= 1;
            self.total -= 1;
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The nearest-rank `q`-quantile (the value at rank `ceil(q·n)`), within α relative error;
    /// `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank <= self.zeros {
            return Some(0.0);
        }
        // The extremes are known exactly; no need to estimate them.
        if rank >= self.total {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = self.zeros;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let gamma = ln_gamma().exp();
                let index = self.offset + i as i32;
                let mid = 2.0 * gamma.powi(index) / (gamma + 1.0);
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn small_sets_by_hand() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        for v in [0.0, 0.0, 0.0, 0.010, 0.200] {
            s.insert(v);
        }
        // ranks: p50 → ceil(2.5) = 3rd value = 0.0; p90 → ceil(4.5) = 5th = 0.200
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert_eq!(s.quantile(0.9), Some(0.200));
        let p70 = s.quantile(0.7).unwrap(); // 4th value, 0.010
        assert!((p70 - 0.010).abs() <= 0.010 * ALPHA, "{p70}");
        s.insert(f64::NAN);
        s.insert(-1.0);
        assert_eq!(s.count(), 5);
    }

    #[test]
    fn removing_what_was_inserted_restores_the_quantiles() {
        let mut s = Sketch::default();
        for v in [0.0, 0.010, 0.020, 0.030, 0.500] {
            s.insert(v);
        }
        s.remove(0.500);
        s.remove(0.0);
        // Left: 0.010, 0.020, 0.030. p50 is the 2nd, 0.020.
        assert_eq!(s.count(), 3);
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 0.020).abs() <= 0.020 * ALPHA, "{p50}");
        // A value never inserted (an empty bucket) changes nothing.
        s.remove(7.0);
        assert_eq!(s.count(), 3);
        for v in [0.010, 0.020, 0.030] {
            s.remove(v);
        }
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantile(0.5), None);
    }

    proptest! {
        #[test]
        fn relative_error_is_bounded(values in proptest::collection::vec(0.0f64..100.0, 1..500), q in 0.0f64..1.0) {
            let mut s = Sketch::default();
            for &v in &values {
                s.insert(v);
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let want = exact(&sorted, q);
            let got = s.quantile(q).unwrap();
            if want <= MIN_POSITIVE {
                prop_assert!(got <= MIN_POSITIVE);
            } else {
                prop_assert!((got - want).abs() <= want * 0.01, "q={} want={} got={}", q, want, got);
            }
        }
    }
}
