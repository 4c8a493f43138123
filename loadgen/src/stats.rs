//! Latency histograms and counters: per core, per second, merged on the reporting thread.
//!
//! Every latency is in microseconds in an HdrHistogram with 3 significant digits (0.1% relative
//! error) from 1 µs to one hour; larger values are clamped to the top and still counted. Each
//! core records into its own [`Interval`] (no sharing, no locks); once a second the core hands
//! the interval to the reporting thread, which merges the cores' intervals of the same second.
//! Aggregates over the measured window are kept separately ([`Totals`]): a sample belongs to the
//! window by its *intended* send time, so a message intended inside the window whose ack arrives
//! late (even during the drain) is counted, and warm-up traffic is not.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency, µs (one hour).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A fresh latency histogram.
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; a failure here is a programming error.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Records `us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// The histograms and counters every report has (a second's, or the measured window's).
#[derive(Debug, Clone)]
pub struct Counts {
    /// Publish latency: ack time minus intended send time.
    pub publish: Histogram<u64>,
    /// Publish delay: actual send (hand-off to the connection) minus intended send time. Large
    /// values mean the producer, not the broker, fell behind.
    pub publish_delay: Histogram<u64>,
    /// End-to-end latency: consume time minus intended send time.
    pub end_to_end: Histogram<u64>,
    /// Messages and bytes acknowledged.
    pub acked_msgs: u64,
    pub acked_bytes: u64,
    /// Messages that failed (error response, connection failure, no ack by the drain timeout).
    pub errors: u64,
    /// Messages and bytes consumed.
    pub consumed_msgs: u64,
    pub consumed_bytes: u64,
    /// Produce requests sent, and the partition batches in them (how well producers batch).
    pub produce_requests: u64,
    pub produce_batches: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            publish: histogram(),
            publish_delay: histogram(),
            end_to_end: histogram(),
            acked_msgs: 0,
            acked_bytes: 0,
            errors: 0,
            consumed_msgs: 0,
            consumed_bytes: 0,
            produce_requests: 0,
            produce_batches: 0,
        }
    }
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counts) {
        // Same bounds on both sides: adding can not fail.
        self.publish.add(&other.publish).expect("same bounds");
        self.publish_delay
            .add(&other.publish_delay)
            .expect("same bounds");
        self.end_to_end.add(&other.end_to_end).expect("same bounds");
        self.acked_msgs += other.acked_msgs;
        self.acked_bytes += other.acked_bytes;
        self.errors += other.errors;
        self.consumed_msgs += other.consumed_msgs;
        self.consumed_bytes += other.consumed_bytes;
        self.produce_requests += other.produce_requests;
        self.produce_batches += other.produce_batches;
    }
}

/// One second on one core (or merged over cores): [`Counts`] by completion time.
#[derive(Debug, Clone, Default)]
pub struct Interval {
    pub counts: Counts,
    /// Largest schedule lag seen at the end of the second, µs: how far behind its intended
    /// times the furthest-behind producer was (0 when on time, or in max-rate mode).
    pub schedule_lag_us: u64,
}

impl std::ops::Deref for Interval {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.counts
    }
}

impl std::ops::DerefMut for Interval {
    fn deref_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }
}

impl Interval {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Interval) {
        self.counts.merge(&other.counts);
        self.schedule_lag_us = self.schedule_lag_us.max(other.schedule_lag_us);
    }
}

/// The measured window: [`Counts`] of the messages intended inside it, plus run-wide counts.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub counts: Counts,
    /// Messages the schedule asked for in the window (constant-rate mode).
    pub intended_msgs: u64,
    /// Messages produced in the whole run, warm-up included (acked or failed), and consumed:
    /// consumers drain until they saw every acked message.
    pub run_acked_msgs: u64,
    pub run_consumed_msgs: u64,
}

impl std::ops::Deref for Totals {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.counts
    }
}

impl std::ops::DerefMut for Totals {
    fn deref_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }
}

impl Totals {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Totals) {
        self.counts.merge(&other.counts);
        self.intended_msgs += other.intended_msgs;
        self.run_acked_msgs += other.run_acked_msgs;
        self.run_consumed_msgs += other.run_consumed_msgs;
    }
}

/// Percentiles of one histogram, in milliseconds (OpenMessaging Benchmark's unit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub avg: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

/// The quantiles reported, with their OpenMessaging field suffixes.
pub const QUANTILES: [(f64, &str); 7] = [
    (0.5, "50pct"),
    (0.75, "75pct"),
    (0.9, "90pct"),
    (0.95, "95pct"),
    (0.99, "99pct"),
    (0.999, "999pct"),
    (0.9999, "9999pct"),
];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of `h` (all zero when empty). Each value is HdrHistogram's
/// `value_at_quantile`: the highest value equivalent to the sample at that rank.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        avg: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.5)),
        p75: ms(h.value_at_quantile(0.75)),
        p90: ms(h.value_at_quantile(0.9)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        p9999: ms(h.value_at_quantile(0.9999)),
        max: ms(h.max()),
    }
}

impl Percentiles {
    /// The value for an OpenMessaging suffix (`50pct` ... `9999pct`).
    pub fn by_suffix(&self, suffix: &str) -> f64 {
        match suffix {
            "50pct" => self.p50,
            "75pct" => self.p75,
            "90pct" => self.p90,
            "95pct" => self.p95,
            "99pct" => self.p99,
            "999pct" => self.p999,
            "9999pct" => self.p9999,
            _ => f64::NAN,
        }
    }
}

/// The percentile spectrum of `h`: (percentile, latency ms) at log-spaced ranks up to the
/// maximum, for plots and for OpenMessaging's `aggregated*Quantiles` maps.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    // 1 - q = 10^-k for k from 0.0 to 6.0 in steps of 0.05, then the max.
    let mut k = 0.0f64;
    while k <= 6.0 + 1e-9 {
        let q = 1.0 - 10f64.powf(-k);
        if q > 0.0 {
            out.push((q * 100.0, ms(h.value_at_quantile(q))));
        }
        k += 0.05;
    }
    out.push((100.0, ms(h.max())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known distribution: 1..=10_000 µs, once each. Every percentile is known exactly (to
    /// HdrHistogram's 3 significant digits).
    #[test]
    fn percentiles_match_a_known_histogram() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            record(&mut h, v);
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 10_000);
        let close = |got: f64, want_us: f64| {
            let want = want_us / 1000.0;
            assert!(
                (got - want).abs() <= want * 0.001 + 1e-9,
                "got {got} ms, want {want} ms"
            );
        };
        close(p.p50, 5_000.0);
        close(p.p75, 7_500.0);
        close(p.p90, 9_000.0);
        close(p.p95, 9_500.0);
        close(p.p99, 9_900.0);
        close(p.p999, 9_990.0);
        close(p.p9999, 9_999.0);
        close(p.max, 10_000.0);
        close(p.avg, 5_000.5);
    }

    /// One stall of 1 s among 10_000 samples: it sits above p99.99, so only the maximum shows
    /// it, and the percentiles below are untouched.
    #[test]
    fn a_single_stall_shows_at_the_tail() {
        let mut h = histogram();
        for _ in 0..9_999 {
            record(&mut h, 1_000);
        }
        record(&mut h, 1_000_000);
        let p = percentiles(&h);
        assert!((p.p99 - 1.0).abs() < 0.002);
        assert!((p.p9999 - 1.0).abs() < 0.002);
        assert!((p.max - 1000.0).abs() < 1.0);
    }

    #[test]
    fn merging_intervals_adds_everything() {
        let mut a = Interval::default();
        let mut b = Interval::default();
        record(&mut a.publish, 100);
        record(&mut b.publish, 300);
        a.acked_msgs = 1;
        b.acked_msgs = 2;
        b.schedule_lag_us = 7;
        a.merge(&b);
        assert_eq!(a.publish.len(), 2);
        assert_eq!(a.acked_msgs, 3);
        assert_eq!(a.schedule_lag_us, 7);
        let s = spectrum(&a.publish);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(s.last().unwrap().0, 100.0);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
