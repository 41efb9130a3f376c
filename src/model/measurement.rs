//! Baselines of measurements (issue 20): CPU percentages, latencies, temperatures, any value
//! sampled on a regular step. Unlike counts ([`super::baselines`]), a missing step is missing,
//! not zero, and the spread is estimated from the data, not assumed Poisson.
//!
//! For each step `t`, from the steps before it only (the trailing `window`):
//!
//! - `median` of the window's values (the level over the whole window).
//! - `expected`, without a season: the **local level**, the median of the last
//!   `2 × smoothing + 1` steps (3 by default). A daily cycle, a trend or a lasting level shift is
//!   followed within `smoothing + 1` steps, while one outlier step does not move it. (A first
//!   version expected the window's median, trend-corrected; a daily cycle then made a dip to
//!   the day's middle look normal: 36.4 against 72.3 on Prism's own labelled series, the same
//!   on NAB; docs/insights.md#measurements-and-any-score-series.)
//! - `spread`: how far values fall from what was expected of them, over the window: the larger
//!   of 1.4826 × the median absolute deviation of those residuals and 1.2533 × their mean
//!   absolute deviation without its largest twentieth (each estimates a standard deviation for
//!   normal noise). The MAD ignores outliers up to half the window, so one incident does not
//!   widen the band after it; but a quantised series (a CPU percentage sitting on a few values,
//!   an idle queue) has a MAD near 0 between its jumps, and scored every jump as extreme (NAB,
//!   scores alone: 2.1 with the MAD, 18.8 with this floor); the mean absolute deviation sees those jumps and still grows only
//!   linearly with an outlier. A flat line's spread is a millionth of its level, so that any
//!   change scores high. With fewer than 3 residuals, the values' own spread is used.
//! - `expected`, with a season (`season` steps, e.g. a day): the median of the same time of
//!   season in each earlier season of the window, `smoothing` steps either side; `spread` is
//!   then their spread (the noise at that time of day). A level shift is followed once half
//!   the window's seasons are past it.
//! - `score`: `(value - expected) / spread`, a robust z-score.

/// How several rows in one step become the step's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Mean,
    Sum,
    Min,
    Max,
    /// The last row in the window's order.
    Last,
}

impl Combine {
    pub fn parse(name: &str) -> Option<Combine> {
        Some(match name.to_ascii_lowercase().as_str() {
            "mean" | "avg" => Combine::Mean,
            "sum" => Combine::Sum,
            "min" => Combine::Min,
            "max" => Combine::Max,
            "last" => Combine::Last,
            _ => return None,
        })
    }

    /// Places `(step, value)` rows, in order, on a grid of `steps` steps: `None` where no row is.
    pub fn grid(self, steps: usize, rows: impl Iterator<Item = (usize, f64)>) -> Vec<Option<f64>> {
        let mut acc: Vec<Option<(f64, u32)>> = vec![None; steps];
        for (i, v) in rows {
            if !v.is_finite() {
                continue;
            }
            acc[i] = Some(match (acc[i], self) {
                (None, _) => (v, 1),
                (Some((a, n)), Combine::Mean | Combine::Sum) => (a + v, n + 1),
                (Some((a, n)), Combine::Min) => (a.min(v), n + 1),
                (Some((a, n)), Combine::Max) => (a.max(v), n + 1),
                (Some((_, n)), Combine::Last) => (v, n + 1),
            });
        }
        acc.into_iter().map(|a| a.map(|(v, n)| if self == Combine::Mean { v / f64::from(n) } else { v })).collect()
    }
}

/// Parameters of a measurement baseline, in steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasurementParams {
    pub window: usize,
    /// 0: no season.
    pub season: usize,
    pub smoothing: usize,
}

/// The baseline of one step of a measurement series, and that step's score.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeasurementBaseline {
    pub median: f64,
    pub spread: f64,
    pub expected: f64,
    /// `(value - expected) / spread`; 0 without a value or with fewer than 3 values before.
    pub score: f64,
    /// Steps with a value in the trailing window.
    pub history: usize,
}

/// MAD to standard deviation, for normal noise.
const MAD_SCALE: f64 = 1.482_6;
/// Mean absolute deviation to standard deviation, for normal noise (sqrt(pi / 2)).
const MEAN_AD_SCALE: f64 = 1.253_3;
/// A spread needs this many samples: with fewer a step is not scored, and a season's
/// estimate falls back to the trailing window's.
const MIN_SAMPLES: usize = 3;

/// The baseline of every step of `values` (`None`: no value at that step).
pub fn measurement_baselines(values: &[Option<f64>], p: &MeasurementParams) -> Vec<MeasurementBaseline> {
    let window = p.window.max(2);
    let value = |i: usize| values[i].filter(|v| v.is_finite());
    // The trailing window's values, and its residuals (each step's value minus what was
    // expected of it), both sorted.
    let (mut all, mut residuals) = (Sorted::default(), Sorted::default());
    let mut residual: Vec<Option<f64>> = vec![None; values.len()];
    let seasons = window.checked_div(p.season).unwrap_or(0);
    let (mut samples, mut recent) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(values.len());
    for t in 0..values.len() {
        let mut b = MeasurementBaseline { history: all.len(), ..Default::default() };
        if !all.is_empty() {
            let median = all.median();
            b.median = median;
            // The local level: the median of the last 2 × smoothing + 1 steps' values.
            recent.clear();
            recent.extend((t.saturating_sub(2 * p.smoothing + 1)..t).filter_map(value));
            b.expected = if recent.is_empty() { median } else { super::median(&mut recent) };
            // The spread is O(window) a step: each window is read once.
            b.spread = if residuals.len() >= MIN_SAMPLES { residuals.median_and_spread().1 } else { all.median_and_spread().1 };
        }
        if seasons > 0 && t >= p.season {
            samples.clear();
            for k in 1..=seasons {
                let Some(centre) = t.checked_sub(k * p.season) else { break };
                let lo = centre.saturating_sub(p.smoothing);
                let hi = (centre + p.smoothing + 1).min(t);
                samples.extend((lo..hi).filter_map(value));
            }
            if samples.len() >= MIN_SAMPLES {
                samples.sort_by(f64::total_cmp);
                let seasonal = Sorted(std::mem::take(&mut samples));
                let (median, spread) = seasonal.median_and_spread();
                b.expected = median;
                b.spread = spread;
                samples = seasonal.0;
            }
        }
        if let Some(v) = value(t)
            && b.history > 0
        {
            residual[t] = Some(v - b.expected);
            if b.history >= MIN_SAMPLES {
                b.score = (v - b.expected) / b.spread;
            }
        }
        out.push(b);
        // Slide the window: t enters, t - window leaves.
        if let Some(v) = value(t) {
            all.insert(v);
        }
        if let Some(r) = residual[t] {
            residuals.insert(r);
        }
        if let Some(gone) = (t + 1).checked_sub(window + 1) {
            if let Some(v) = value(gone) {
                all.remove(v);
            }
            if let Some(r) = residual[gone] {
                residuals.remove(r);
            }
        }
    }
    out
}

/// A sorted multiset of floats (the values of a window).
#[derive(Debug, Default)]
struct Sorted(Vec<f64>);

impl Sorted {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn insert(&mut self, v: f64) {
        let at = self.0.partition_point(|x| x.total_cmp(&v).is_lt());
        self.0.insert(at, v);
    }

    fn remove(&mut self, v: f64) {
        let at = self.0.partition_point(|x| x.total_cmp(&v).is_lt());
        if self.0.get(at).is_some_and(|x| x.total_cmp(&v).is_eq()) {
            self.0.remove(at);
        }
    }

    fn median(&self) -> f64 {
        super::median_sorted(&self.0)
    }

    /// The median and the robust spread around it (see the module's notes on the fallbacks).
    fn median_and_spread(&self) -> (f64, f64) {
        let s = &self.0;
        let median = self.median();
        // Distances from the median, in increasing order, are a merge of two sorted runs:
        // leftwards from the median and rightwards from it.
        let split = s.partition_point(|x| *x < median);
        let (left, right) = (&s[..split], &s[split..]);
        let distance = |i: usize| -> f64 {
            // The i-th smallest distance, by merging (i is small relative to the window; a
            // linear merge keeps this simple and O(window)).
            let (mut l, mut r) = (left.len(), 0);
            let mut d = 0.0;
            for _ in 0..=i {
                let dl = if l > 0 { median - left[l - 1] } else { f64::INFINITY };
                let dr = if r < right.len() { right[r] - median } else { f64::INFINITY };
                if dl <= dr {
                    d = dl;
                    l -= 1;
                } else {
                    d = dr;
                    r += 1;
                }
            }
            d
        };
        let n = s.len();
        let mad = if n % 2 == 1 { distance(n / 2) } else { (distance(n / 2 - 1) + distance(n / 2)) / 2.0 };
        // The mean absolute deviation without the largest twentieth of the distances (the
        // two ends of the sorted window), so that one incident moves it little.
        let trim = n / 20;
        let (mut lo, mut hi, mut largest) = (0, n, 0.0);
        for _ in 0..trim {
            if median - s[lo] >= s[hi - 1] - median {
                largest += median - s[lo];
                lo += 1;
            } else {
                largest += s[hi - 1] - median;
                hi -= 1;
            }
        }
        let mean_ad = (s.iter().map(|x| (x - median).abs()).sum::<f64>() - largest) / (n - trim) as f64;
        let mut spread = (MAD_SCALE * mad).max(MEAN_AD_SCALE * mean_ad);
        if spread <= 0.0 {
            spread = 1e-6 * median.abs().max(1.0);
        }
        (median, spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(window: usize, season: usize, smoothing: usize) -> MeasurementParams {
        MeasurementParams { window, season, smoothing }
    }

    #[test]
    fn rows_in_a_step_are_combined_and_missing_steps_stay_missing() {
        let rows = [(0, 1.0), (0, 3.0), (2, 5.0), (2, f64::NAN)];
        assert_eq!(Combine::Mean.grid(4, rows.into_iter()), vec![Some(2.0), None, Some(5.0), None]);
        assert_eq!(Combine::Sum.grid(3, rows.into_iter()), vec![Some(4.0), None, Some(5.0)]);
        assert_eq!(Combine::Max.grid(1, [(0, 1.0), (0, 3.0)].into_iter()), vec![Some(3.0)]);
        assert_eq!(Combine::Last.grid(1, [(0, 4.0), (0, 2.0)].into_iter()), vec![Some(2.0)]);
        assert_eq!(Combine::parse("AVG"), Some(Combine::Mean));
        assert_eq!(Combine::parse("median"), None);
    }

    #[test]
    fn median_and_spread_ignore_an_outlier() {
        // 9, 10, 11 repeating (median 10; the local level of 3 steps is always 10, so the
        // residuals are -1, 0, 1) and one incident of 500.
        let mut v: Vec<Option<f64>> = (0..60).map(|i| Some(9.0 + (i % 3) as f64)).collect();
        v[30] = Some(500.0);
        let b = measurement_baselines(&v, &p(100, 0, 1));
        assert_eq!(b[59].median, 10.0);
        assert_eq!(b[59].expected, 10.0);
        assert!((b[59].spread - MAD_SCALE).abs() < 1e-12, "{}", b[59].spread);
        assert!(b[30].score > 100.0);
        assert_eq!(b[0], MeasurementBaseline::default());
        assert_eq!(b[59].history, 59);
    }

    #[test]
    fn a_quantised_series_is_not_scored_extreme() {
        // A CPU percentage sitting at 2 with jumps to 40 one step in six: the MAD is 0, the
        // (trimmed) mean absolute deviation is not, so a jump scores moderately.
        let v: Vec<Option<f64>> = (0..120).map(|i| Some(if i % 6 == 0 { 40.0 } else { 2.0 })).collect();
        let b = measurement_baselines(&v, &p(60, 0, 0));
        assert!(b[114].score > 1.0 && b[114].score < 10.0, "{:?}", b[114]);
    }

    #[test]
    fn gaps_are_not_zeros() {
        let v = vec![Some(50.0), None, None, Some(52.0), None, Some(48.0), Some(50.0)];
        let b = measurement_baselines(&v, &p(100, 0, 0));
        assert_eq!(b[6].median, 50.0, "the missing steps do not pull it to 0");
        assert_eq!(b[6].history, 3);
        assert_eq!(b[4].score, 0.0, "no value, no score");
    }

    #[test]
    fn a_flat_line_scores_any_change_high() {
        let mut v = vec![Some(7.0); 30];
        v[29] = Some(7.5);
        let b = measurement_baselines(&v, &p(20, 0, 0));
        assert!(b[29].score > 1e4, "{}", b[29].score);
        assert_eq!(b[28].score, 0.0);
    }

    #[test]
    fn a_level_shift_is_followed_within_a_few_steps() {
        // 0/1 noise around 10, then around 30 from step 100; window 40, local level of 3 steps.
        let v: Vec<Option<f64>> = (0..200).map(|i| Some(if i < 100 { 10.0 } else { 30.0 } + (i % 2) as f64)).collect();
        let b = measurement_baselines(&v, &p(40, 0, 1));
        assert!(b[100].score > 10.0 && b[101].score > 10.0, "the shift itself is unusual: {:?}", &b[100..102]);
        let settled = (100..200).find(|&t| b[t].score.abs() < 3.0).unwrap();
        assert_eq!(settled, 102, "followed once 2 of the last 3 steps are past it");
        assert!(b[102..].iter().all(|b| b.score.abs() < 3.0));
    }

    #[test]
    fn a_steady_trend_is_expected() {
        let v: Vec<Option<f64>> = (0..300).map(|i| Some(i as f64 * 0.5 + (i % 3) as f64)).collect();
        let b = measurement_baselines(&v, &p(60, 0, 0));
        for (t, b) in b.iter().enumerate().skip(100) {
            assert!(b.score.abs() < 3.0, "step {t}: {b:?}");
        }
        assert!((b[200].expected - 101.0).abs() < 3.0, "{}", b[200].expected);
    }

    #[test]
    fn a_season_expects_the_time_of_day() {
        // Seasons of 10 steps: high (100 ± 1) at phases 3..=5, low (10 ± 1) elsewhere.
        let v: Vec<Option<f64>> = (0..80).map(|i| Some(if (3..=5).contains(&(i % 10)) { 100.0 } else { 10.0 } + (i % 2) as f64)).collect();
        let b = measurement_baselines(&v, &p(50, 10, 0));
        assert!(b[74].score.abs() < 3.0, "the daily high is expected: {:?}", b[74]);
        let mut dip = v.clone();
        dip[74] = Some(10.0);
        let d = measurement_baselines(&dip, &p(50, 10, 0));
        assert!(d[74].score < -10.0, "a low at the time of the high is unusual: {:?}", d[74]);
    }
}
