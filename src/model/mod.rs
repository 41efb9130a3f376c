//! The scoring model, shared by the detector and the SQL functions (one implementation).
//! This file models counts (the lake's API calls); [`measurement`] models measured values and
//! [`likelihood`] turns any score series into a comparable likelihood; [`novelty`] scores a
//! value by its distance from every earlier one.
//!
//! A series is a regularly sampled count (calls per minute of one API); steps with no data are
//! zeros. For each step `t` the **baseline** is computed from the steps before it only:
//!
//! - `mean`, `stddev`: over the trailing window of `window` steps (7 days of minutes);
//! - `expected`: the seasonal level: the mean of the values at the same phase (same minute of
//!   the day) in each whole season (day) of the window, leaving out the highest when there are
//!   three or more, so that one past incident does not become an expectation. A nightly job at
//!   02:05 therefore expects its own burst at 02:05, and working-hours traffic expects
//!   working-hours levels. With `tolerance` > 0, the largest such level within that many steps
//!   either side is used (for jobs that drift). Without a whole season of history, `expected`
//!   is the trailing mean.
//! - `level`: the same, but each season contributes its median over the steps around the same
//!   time (`smoothing` either side), which is steadier than one step's few samples and not
//!   moved by a job's one-step burst.
//!   `expected` is never below `level`; drops are measured against `level`.
//!
//! The **deviation score** of an observed count against an expectation is
//! `(observed - expected) / sqrt(expected + floor)`: counts vary like a Poisson process
//! (variance = mean), and `floor` keeps rare events (expected near 0) from scoring huge on one
//! call. Summing `observed` and `expected` over a few steps before scoring weighs sustained
//! deviations over single noisy steps. The **anomaly probability** of a score is the share of
//! a standard normal distribution closer to zero than it: `erf(|score| / sqrt 2)`, in [0, 1).

pub mod likelihood;
pub mod measurement;
pub mod novelty;

pub use likelihood::likelihoods;
pub use measurement::{Combine, MeasurementBaseline, MeasurementParams, measurement_baselines};
pub use novelty::novelty;

/// Parameters of the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineParams {
    /// Steps in the trailing window (10080 minutes = 7 days).
    pub window: usize,
    /// Steps in one season (1440 minutes = 1 day); 0 turns seasonality off.
    pub season: usize,
    /// How many steps either side of the same phase a recurring burst may drift.
    pub tolerance: usize,
    /// Steps either side averaged into the seasonal `level` (smooths a phase's few samples).
    pub smoothing: usize,
}

impl Default for BaselineParams {
    fn default() -> Self {
        BaselineParams { window: 10_080, season: 1_440, tolerance: 0, smoothing: 5 }
    }
}

/// The baseline of one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Baseline {
    /// Mean over the trailing window (zeros included).
    pub mean: f64,
    /// Standard deviation over the trailing window.
    pub stddev: f64,
    /// The seasonal expectation for this step: the larger of `level` and the same phase's own
    /// values (a job at this exact minute). Spikes are measured against it.
    pub expected: f64,
    /// The seasonal level around this step: the same time of season, `smoothing` steps either
    /// side, averaged over the seasons. Drops are measured against it.
    pub level: f64,
    /// Steps of history the window held (less than `window` early in a series).
    pub history: usize,
}

/// The baseline of every step of `values` (a dense series; index 0 is the first step with any
/// history). The window mean and spread come from running sums; the seasonal level looks at
/// the same phase in each earlier season of the window.
pub fn baselines(values: &[f64], p: &BaselineParams) -> Vec<Baseline> {
    let n = values.len();
    let window = p.window.max(1);
    // Prefix sums of values and squares.
    let mut sum = vec![0.0; n + 1];
    let mut sq = vec![0.0; n + 1];
    for (i, v) in values.iter().enumerate() {
        sum[i + 1] = sum[i] + v;
        sq[i + 1] = sq[i] + v * v;
    }
    let seasons = window.checked_div(p.season).unwrap_or(0);
    let mut samples: Vec<f64> = Vec::with_capacity(seasons);
    let mut around: Vec<f64> = Vec::with_capacity(2 * p.smoothing + 1);
    // The same phase (step i, which may lie up to `tolerance` steps after t, still a whole
    // season back at least) in each earlier season, trimmed.
    let phase = |i: usize, samples: &mut Vec<f64>| -> Option<f64> {
        samples.clear();
        samples.extend((1..=seasons).map_while(|k| i.checked_sub(k * p.season)).filter_map(|j| values.get(j).copied()));
        trimmed_mean(samples)
    };
    (0..n)
        .map(|t| {
            let start = t.saturating_sub(window);
            let h = t - start;
            let (mean, stddev) = if h == 0 {
                (0.0, 0.0)
            } else {
                let m = (sum[t] - sum[start]) / h as f64;
                let var = ((sq[t] - sq[start]) / h as f64 - m * m).max(0.0);
                (m, var.sqrt())
            };
            if seasons == 0 || t < p.season {
                return Baseline { mean, stddev, expected: mean, level: mean, history: h };
            }
            let mut peak: Option<f64> = None;
            for i in t.saturating_sub(p.tolerance)..=t + p.tolerance {
                if let Some(avg) = phase(i, &mut samples) {
                    peak = Some(peak.map_or(avg, |e: f64| e.max(avg)));
                }
            }
            // The level: each season's median over the steps around the same time (a job's
            // one-minute burst does not move a median), then their trimmed mean.
            samples.clear();
            for k in 1..=seasons {
                let Some(centre) = t.checked_sub(k * p.season) else { break };
                let lo = centre.saturating_sub(p.smoothing);
                let hi = (centre + p.smoothing + 1).min(t);
                if hi > lo {
                    around.clear();
                    around.extend_from_slice(&values[lo..hi]);
                    samples.push(median(&mut around));
                }
            }
            let level = trimmed_mean(&mut samples).unwrap_or(mean);
            Baseline { mean, stddev, expected: peak.unwrap_or(level).max(level), level, history: h }
        })
        .collect()
}

/// The median of `v` (0 when empty); sorts it.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    median_sorted(v)
}

/// The median of values already sorted (0 when empty).
fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The mean of the values at the same phase, leaving out the highest once there are three or
/// more: one unusual day (last week's incident) must not become this week's expectation,
/// while a job that runs every day stays expected.
fn trimmed_mean(v: &mut [f64]) -> Option<f64> {
    match v.len() {
        0 => None,
        1 | 2 => Some(v.iter().sum::<f64>() / v.len() as f64),
        n => {
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((v.iter().sum::<f64>() - max) / (n - 1) as f64)
        }
    }
}

/// How far `observed` is from `expected`, in Poisson standard deviations with a floor.
pub fn deviation_score(observed: f64, expected: f64, floor: f64) -> f64 {
    let var = expected.max(0.0) + floor.max(0.0);
    if var <= 0.0 {
        return if observed == expected { 0.0 } else { f64::INFINITY.copysign(observed - expected) };
    }
    (observed - expected) / var.sqrt()
}

/// The probability that a deviation this large is not noise: `erf(|score| / sqrt 2)`.
pub fn anomaly_probability(score: f64) -> f64 {
    if score.is_nan() {
        return f64::NAN;
    }
    (1.0 - erfc(score.abs() / std::f64::consts::SQRT_2)).max(0.0)
}

/// The complementary error function, by the Chebyshev fit of Numerical Recipes (`erfcc`):
/// relative error below 1.2e-7 everywhere, so far tails (the likelihood's 1e-10) stay exact
/// where `1 - erf` would round to 0.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_series_has_its_mean_and_no_spread() {
        let v = vec![3.0; 100];
        let b = baselines(&v, &BaselineParams { window: 10, season: 0, tolerance: 0, smoothing: 0 });
        assert_eq!(b[0], Baseline::default());
        assert_eq!(b[50].mean, 3.0);
        assert_eq!(b[50].stddev, 0.0);
        assert_eq!(b[50].expected, 3.0);
        assert_eq!(b[5].history, 5);
        assert_eq!(b[50].history, 10);
    }

    #[test]
    fn trailing_window_excludes_the_current_step() {
        let mut v = vec![0.0; 20];
        v[10] = 100.0;
        let b = baselines(&v, &BaselineParams { window: 5, season: 0, tolerance: 0, smoothing: 0 });
        assert_eq!(b[10].mean, 0.0, "the spike is not its own baseline");
        assert_eq!(b[11].mean, 20.0);
        assert_eq!(b[16].mean, 0.0, "out of the window again");
    }

    #[test]
    fn a_daily_burst_is_expected_at_its_time() {
        // 4 "days" of 10 steps with a burst of 50 at phase 3 every day.
        let mut v = vec![1.0; 40];
        for d in 0..4 {
            v[d * 10 + 3] = 50.0;
        }
        let p = BaselineParams { window: 30, season: 10, tolerance: 1, smoothing: 0 };
        let b = baselines(&v, &p);
        assert_eq!(b[33].expected, 50.0, "same phase on earlier days");
        assert_eq!(b[34].expected, 50.0, "within the tolerance");
        assert_eq!(b[36].expected, 1.0, "outside the tolerance");
        let exact = baselines(&v, &BaselineParams { tolerance: 0, ..p });
        assert_eq!(exact[34].expected, 1.0, "no tolerance: only the same phase");
        assert!(b[33].mean < 10.0);
        // Only one season back exists on day 1.
        assert_eq!(b[13].expected, 50.0);
        // Day 0 has no season yet: the trailing mean.
        assert_eq!(b[5].expected, b[5].mean);
    }

    #[test]
    fn one_unusual_day_is_not_expected_again() {
        let mut v = vec![2.0; 80];
        v[13] = 90.0; // an incident on day 1 only
        let b = baselines(&v, &BaselineParams { window: 50, season: 10, tolerance: 0, smoothing: 0 });
        assert_eq!(b[23].expected, 46.0, "two seasons: plain mean");
        assert_eq!(b[43].expected, 2.0, "three or more: the highest is left out");
    }

    #[test]
    fn the_level_smooths_the_time_of_day_and_keeps_the_burst_apart() {
        // 5 seasons of 10: noisy ones and twos, a burst of 30 at phase 5 each season.
        let mut v: Vec<f64> = (0..60).map(|i| if i % 2 == 0 { 1.0 } else { 2.0 }).collect();
        for d in 0..6 {
            v[d * 10 + 5] = 30.0;
        }
        let b = baselines(&v, &BaselineParams { window: 50, season: 10, tolerance: 0, smoothing: 1 });
        // Phase 5: expected is the burst; the level is the median of phases 4..=6 of each
        // season, which the burst does not move.
        assert_eq!(b[55].expected, 30.0);
        assert_eq!(b[55].level, 1.0);
        // Phase 2: 1s at phase 2 but 2s either side.
        assert_eq!(b[52].level, 2.0);
        assert_eq!(b[52].expected, 2.0);
    }

    #[test]
    fn seasons_older_than_the_window_are_forgotten() {
        let mut v = vec![0.0; 50];
        v[3] = 70.0; // day 0 only
        let p = BaselineParams { window: 20, season: 10, tolerance: 0, smoothing: 0 };
        let b = baselines(&v, &p);
        assert_eq!(b[13].expected, 70.0);
        assert_eq!(b[23].expected, 35.0);
        assert_eq!(b[33].expected, 0.0, "two seasons back is past the window");
    }

    #[test]
    fn scores_and_probabilities() {
        assert_eq!(deviation_score(4.0, 3.0, 1.0), 0.5);
        assert!(deviation_score(0.0, 8.0, 1.0) < -2.6);
        assert_eq!(deviation_score(1.0, 0.0, 0.0), f64::INFINITY);
        assert!(anomaly_probability(0.0).abs() < 1e-6);
        assert!((anomaly_probability(1.96) - 0.95).abs() < 1e-3);
        assert!((anomaly_probability(-1.96) - 0.95).abs() < 1e-3);
        assert!(anomaly_probability(8.0) > 0.999_999);
    }
}
