//! Round-trip statistics over a sliding window of samples.

use std::collections::VecDeque;
use std::time::Duration;

/// RTT figures over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttStats {
    /// The latest sample.
    pub last: Duration,
    /// Smallest in the window.
    pub min: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Largest in the window.
    pub max: Duration,
    /// Population standard deviation.
    pub stddev: Duration,
}

/// The last `capacity` RTT samples.
#[derive(Debug, Clone)]
pub struct RttWindow {
    capacity: usize,
    samples: VecDeque<Duration>,
}

impl RttWindow {
    /// A window of `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, rtt: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt);
    }

    /// How many samples the window holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the window holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The statistics, or `None` before the first sample.
    pub fn stats(&self) -> Option<RttStats> {
        let last = *self.samples.back()?;
        let n = self.samples.len() as f64;
        let secs: Vec<f64> = self.samples.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / n;
        let var = secs.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
        Some(RttStats {
            last,
            min: *self.samples.iter().min()?,
            mean: Duration::from_secs_f64(mean),
            max: *self.samples.iter().max()?,
            stddev: Duration::from_secs_f64(var.sqrt()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    #[test]
    fn table() {
        struct Case {
            cap: usize,
            samples: Vec<u64>,
            want: Option<(u64, u64, u64, u64, u64)>,
        }
        let cases = [
            Case {
                cap: 10,
                samples: vec![],
                want: None,
            },
            Case {
                cap: 10,
                samples: vec![5],
                want: Some((5, 5, 5, 5, 0)),
            },
            // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, population stddev 2.
            Case {
                cap: 10,
                samples: vec![2, 4, 4, 4, 5, 5, 7, 9],
                want: Some((9, 2, 5, 9, 2)),
            },
            // The window keeps the last 3: 10, 20, 30.
            Case {
                cap: 3,
                samples: vec![1000, 10, 20, 30],
                want: Some((30, 10, 20, 30, 8)),
            },
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let mut w = RttWindow::new(c.cap);
            for s in &c.samples {
                w.push(ms(*s));
            }
            let got = w.stats();
            match (got, c.want) {
                (None, None) => {}
                (Some(g), Some((last, min, mean, max, sd))) => {
                    assert_eq!(g.last, ms(last), "case {i}");
                    assert_eq!(g.min, ms(min), "case {i}");
                    assert!(close(g.mean, ms(mean)), "case {i}: {:?}", g.mean);
                    assert_eq!(g.max, ms(max), "case {i}");
                    // sqrt(200/3) = 8.16 ms for case 3: compare whole ms.
                    assert_eq!(g.stddev.as_millis() as u64, sd, "case {i}: {:?}", g.stddev);
                }
                (g, w) => panic!("case {i}: got {g:?}, want {w:?}"),
            }
        }
    }
}
