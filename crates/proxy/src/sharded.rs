//! Metrics kept per proxy worker thread and summed when scraped: what every request counts.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Per-request metrics are kept in shards, one per proxy worker thread, summed when scraped:
/// two workers counting into one atomic (or the stock histogram's mutex) bounced its cache
/// line between the cores on every request, a few per cent of the proxy's throughput
/// (bench_proxy). More workers than shards share shards (still exact: the shards are atomic).
const SHARDS: usize = 8;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread count into shard `i` (a proxy worker's index + 1; other threads use 0).
pub(crate) fn use_shard(i: usize) {
    SHARD.with(|s| s.set(i % SHARDS));
}

fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// One shard on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter summed over the workers' shards.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge summed over the workers' shards (a shard alone may go negative: what one worker
/// added another may take off).
#[derive(Debug, Clone, Default)]
pub struct ShardedGauge(Arc<[Padded<AtomicI64>; SHARDS]>);

impl ShardedGauge {
    /// Adds one until the returned guard is dropped.
    pub fn hold(&self) -> GaugeHold {
        let shard = shard();
        self.0[shard].0.fetch_add(1, Relaxed);
        GaugeHold {
            gauge: self.clone(),
            shard,
        }
    }

    pub fn get(&self) -> i64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// One unit of a [`ShardedGauge`], taken off the shard it was added to when dropped.
pub struct GaugeHold {
    gauge: ShardedGauge,
    shard: usize,
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.gauge.0[self.shard].0.fetch_sub(1, Relaxed);
    }
}

impl TypedMetric for ShardedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ShardedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The latency buckets' upper bounds: 0.5 ms … ~16 s, then +Inf.
const LATENCY_BUCKETS: usize = 16;

fn latency_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, LATENCY_BUCKETS as u16).chain([f64::INFINITY])
}

#[derive(Debug, Default)]
struct HistogramShard {
    /// The observations' sum in nanoseconds (an integer adds atomically). The count is the
    /// buckets' sum, so a scrape never sees them disagree.
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
}

/// A latency histogram summed over the workers' shards.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: Arc<[Padded<HistogramShard>; SHARDS]>,
}

impl Default for ShardedHistogram {
    fn default() -> Self {
        ShardedHistogram {
            bounds: latency_bounds().collect(),
            shards: Arc::default(),
        }
    }
}

impl ShardedHistogram {
    pub fn observe(&self, seconds: f64) {
        let s = &self.shards[shard()].0;
        let bucket = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS);
        s.buckets[bucket].fetch_add(1, Relaxed);
        s.sum_nanos.fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    /// Count, sum (seconds) and per-bucket counts (not cumulative), over every shard.
    pub fn get(&self) -> (u64, f64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        let mut nanos = 0u64;
        for s in self.shards.iter() {
            nanos = nanos.wrapping_add(s.0.sum_nanos.load(Relaxed));
            for (b, n) in buckets.iter_mut().zip(&s.0.buckets) {
                b.1 += n.load(Relaxed);
            }
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (count, nanos as f64 / 1e9, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
