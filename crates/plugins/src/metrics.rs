//! Metrics a plugin defines and updates (ABI v1.2): counters, gauges and histograms.
//!
//! Each plugin has one registry, kept across traps and reloads, bounded in the number of
//! metrics (`max_metrics` in its `[plugins.NAME.metrics]` table) and in name length.
//! [`PluginMetrics::snapshot`] is what `serf info` shows and what a metrics exporter reads:
//! name, kind, help and value, with a histogram's buckets (Prometheus' default bounds).

use std::sync::{Mutex, MutexGuard, PoisonError};

use serf_plugin_sdk::abi::{self, Status};

/// Upper bounds of the histogram buckets (the last bucket, `+Inf`, is implied).
pub const HISTOGRAM_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Longest help text kept, in bytes.
const MAX_HELP_BYTES: usize = 256;

/// What a plugin's `[plugins.NAME.metrics]` table grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsGrant {
    /// Metrics it may define.
    pub max_metrics: usize,
}

impl MetricsGrant {
    /// Thirty-two metrics.
    pub const DEFAULT_MAX_METRICS: usize = 32;
}

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set to any value.
    Gauge,
    /// Observations counted into buckets.
    Histogram,
}

impl MetricKind {
    fn parse(name: &str) -> Option<MetricKind> {
        Some(match name {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "histogram" => MetricKind::Histogram,
            _ => return None,
        })
    }

    /// `counter`, `gauge` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A metric's value at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSnapshot {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: MetricKind,
    /// Its help line.
    pub help: String,
    /// A counter's total or a gauge's value; a histogram's sum.
    pub value: f64,
    /// Observations (histograms; 0 otherwise).
    pub count: u64,
    /// Observations per bucket of [`HISTOGRAM_BOUNDS`], then `+Inf`, not cumulative
    /// (histograms; empty otherwise).
    pub buckets: Vec<u64>,
}

impl MetricSnapshot {
    /// One line for `serf info`: `12`, or `count=3 sum=0.75`.
    pub fn describe(&self) -> String {
        match self.kind {
            MetricKind::Histogram => format!("count={} sum={}", self.count, self.value),
            _ => format!("{}", self.value),
        }
    }
}

/// One plugin's metrics.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    metrics: Mutex<Vec<MetricSnapshot>>,
}

impl PluginMetrics {
    fn lock(&self) -> MutexGuard<'_, Vec<MetricSnapshot>> {
        self.metrics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Defines a metric, or finds the one of that name and kind; returns its id (from 1).
    pub fn define(&self, grant: &MetricsGrant, define: &abi::MetricDefine) -> Result<u32, Status> {
        let name = &define.name;
        let valid = abi::MetricDefine::is_valid_name(name);
        let kind = MetricKind::parse(&define.kind).filter(|_| valid);
        let Some(kind) = kind else {
            return Err(Status::BadArgument);
        };
        let mut metrics = self.lock();
        if let Some(index) = metrics.iter().position(|m| m.name == *name) {
            return if metrics[index].kind == kind {
                Ok(index as u32 + 1)
            } else {
                Err(Status::NotAllowed)
            };
        }
        if metrics.len() >= grant.max_metrics {
            return Err(Status::TooLarge);
        }
        let mut help = define.help.clone();
        if help.len() > MAX_HELP_BYTES {
            let mut cut = MAX_HELP_BYTES;
            while !help.is_char_boundary(cut) {
                cut -= 1;
            }
            help.truncate(cut);
        }
        metrics.push(MetricSnapshot {
            name: name.clone(),
            kind,
            help: super::stdio::escape_controls(&help).into_owned(),
            value: 0.0,
            count: 0,
            buckets: if kind == MetricKind::Histogram {
                vec![0; HISTOGRAM_BOUNDS.len() + 1]
            } else {
                Vec::new()
            },
        });
        Ok(metrics.len() as u32)
    }

    /// Records `value` into metric `id`: adds to a counter, sets a gauge, observes into a
    /// histogram.
    pub fn record(&self, id: i32, value: f64) -> Result<(), Status> {
        if !value.is_finite() {
            return Err(Status::BadArgument);
        }
        let mut metrics = self.lock();
        let index = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .ok_or(Status::NotFound)?;
        let metric = metrics.get_mut(index).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricKind::Counter if value < 0.0 => return Err(Status::BadArgument),
            MetricKind::Counter => metric.value += value,
            MetricKind::Gauge => metric.value = value,
            MetricKind::Histogram => {
                metric.value += value;
                metric.count += 1;
                let bucket = HISTOGRAM_BOUNDS
                    .iter()
                    .position(|bound| value <= *bound)
                    .unwrap_or(HISTOGRAM_BOUNDS.len());
                metric.buckets[bucket] += 1;
            }
        }
        Ok(())
    }

    /// Every metric, in definition order.
    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn define(name: &str, kind: &str) -> abi::MetricDefine {
        abi::MetricDefine {
            name: name.into(),
            kind: kind.into(),
            help: "h".into(),
        }
    }

    #[test]
    fn metrics_are_defined_once_bounded_and_recorded_by_kind() {
        let metrics = PluginMetrics::default();
        let grant = MetricsGrant { max_metrics: 3 };
        let sent = metrics
            .define(&grant, &define("posts_sent", "counter"))
            .unwrap();
        assert_eq!(
            metrics.define(&grant, &define("posts_sent", "counter")),
            Ok(sent)
        );
        assert_eq!(
            metrics.define(&grant, &define("posts_sent", "gauge")),
            Err(Status::NotAllowed)
        );
        let depth = metrics.define(&grant, &define("depth", "gauge")).unwrap();
        let latency = metrics
            .define(&grant, &define("latency", "histogram"))
            .unwrap();
        assert_eq!(
            metrics.define(&grant, &define("one_more", "counter")),
            Err(Status::TooLarge)
        );
        for bad in ["", "Caps", "9lives", "a-b", &"x".repeat(65)] {
            assert_eq!(
                metrics.define(&grant, &define(bad, "counter")),
                Err(Status::BadArgument),
                "{bad}"
            );
        }
        assert_eq!(
            metrics.define(&grant, &define("x", "summary")),
            Err(Status::BadArgument)
        );
        metrics.record(sent as i32, 2.0).unwrap();
        metrics.record(sent as i32, 1.0).unwrap();
        assert_eq!(metrics.record(sent as i32, -1.0), Err(Status::BadArgument));
        assert_eq!(
            metrics.record(sent as i32, f64::NAN),
            Err(Status::BadArgument)
        );
        metrics.record(depth as i32, 7.0).unwrap();
        metrics.record(depth as i32, -3.0).unwrap();
        metrics.record(latency as i32, 0.2).unwrap();
        metrics.record(latency as i32, 50.0).unwrap();
        assert_eq!(metrics.record(0, 1.0), Err(Status::NotFound));
        assert_eq!(metrics.record(9, 1.0), Err(Status::NotFound));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot[0].describe(), "3");
        assert_eq!(snapshot[1].describe(), "-3");
        assert_eq!(snapshot[2].describe(), "count=2 sum=50.2");
        assert_eq!(snapshot[2].buckets[5], 1);
        assert_eq!(snapshot[2].buckets[11], 1);
    }
}
