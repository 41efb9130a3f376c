//! The anomaly likelihood (issue 20): how unusual the recent scores of a series are, given
//! that series' own history of scores. Raw scores are not comparable across series (a noisy
//! CPU metric has many |z| > 3, a steady one none), and one outlier step is usually noise. So,
//! as in the streaming anomaly detection literature (Ahmad et al., "Unsupervised real-time
//! anomaly detection for streaming data", 2017), the likelihood compares the **short-term
//! average** of the scores (the last `short` rows) with the **long-term distribution** of such
//! averages (mean and standard deviation over the `long` rows before), as a normal tail
//! probability, and reports it on a log scale:
//!
//! `likelihood = min(1, -log10(tail) / 10)`, where `tail = P(N(mean, sd) >= average)`.
//!
//! 0.3 means a tail of 1e-3, 0.5 a tail of 1e-5, 1.0 a tail of 1e-10 or less. The scale keeps
//! grading where a plain probability would sit at 0.9999…, so one threshold (around 0.5) works
//! across series. Only high averages count: give it `abs(score)` to flag both directions.
//! Until [`LEARNING`] averages exist, the likelihood is 0 (no judgement).
//!
//! As in that paper's implementation, a row past the "red" tail (1e-5, likelihood 0.5) right
//! after another red row is shown as "yellow" (1e-3, 0.3): a lasting anomaly is reported at its
//! start, not once per row while the average stays high. On NAB this alone took the score from
//! 22.3 to 47.8 (docs/insights.md#measurements-and-any-score-series).

/// A tail this small is "red"; a red row right after a red row is shown as [`YELLOW`], so
/// that a lasting anomaly is reported at its start and not once per row.
const RED: f64 = 1e-5;
const YELLOW: f64 = 1e-3;

/// Rows of averaged history needed before any judgement.
pub const LEARNING: usize = 100;
/// The default short-term average, in rows.
pub const DEFAULT_SHORT: usize = 10;
/// The default long-term history, in rows (a month of 5-minute steps).
pub const DEFAULT_LONG: usize = 8_640;

/// The likelihood of each row's recent scores (`None` or NaN scores count as 0).
pub fn likelihoods(scores: &[Option<f64>], short: usize, long: usize) -> Vec<f64> {
    let short = short.max(1);
    let long = long.max(2);
    let n = scores.len();
    let value = |i: usize| scores[i].filter(|v| v.is_finite()).unwrap_or(0.0);
    // Short-term averages, then prefix sums of them and of their squares.
    let mut running = 0.0;
    let mut average = vec![0.0; n];
    for (i, a) in average.iter_mut().enumerate() {
        running += value(i);
        if i >= short {
            running -= value(i - short);
        }
        *a = running / (i + 1).min(short) as f64;
    }
    let mut sum = vec![0.0; n + 1];
    let mut sq = vec![0.0; n + 1];
    for i in 0..n {
        sum[i + 1] = sum[i] + average[i];
        sq[i + 1] = sq[i] + average[i] * average[i];
    }
    let mut previous_red = false;
    (0..n)
        .map(|i| {
            // The averages of the long window before row i, from the first whole one on.
            let start = i.saturating_sub(long).max(short - 1);
            if i < start || i - start < LEARNING {
                return 0.0;
            }
            let h = (i - start) as f64;
            let mean = (sum[i] - sum[start]) / h;
            let var = ((sq[i] - sq[start]) / h - mean * mean).max(0.0);
            // A floor on the spread: a series of identical scores would make any change
            // infinitely unlikely.
            let sd = var.sqrt().max(1e-3 * mean.abs()).max(1e-9);
            let tail = normal_tail((average[i] - mean) / sd);
            let red = tail <= RED;
            let shown = if red && previous_red { YELLOW } else { tail };
            previous_red = red;
            from_tail(shown)
        })
        .collect()
}

/// The log-scaled likelihood of a tail probability: 1 at 1e-10 or below.
pub fn from_tail(tail: f64) -> f64 {
    (-tail.max(1e-300).log10() / 10.0).clamp(0.0, 1.0)
}

/// `P(Z >= z)` for a standard normal `Z`, accurate in relative terms far into the tail.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * super::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores like |z| of normal noise: uniform in [0, 2) from a fixed xorshift sequence.
    fn noise(n: usize) -> Vec<Option<f64>> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0)
            })
            .collect()
    }

    #[test]
    fn tails_are_accurate_far_out() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(1.96) - 0.025).abs() < 1e-4);
        // P(Z >= 8) = 6.22e-16: relative accuracy, not absolute.
        assert!((normal_tail(8.0) / 6.221e-16 - 1.0).abs() < 1e-3, "{}", normal_tail(8.0));
        assert_eq!(from_tail(1e-5), 0.5);
        assert_eq!(from_tail(1e-12), 1.0);
        assert_eq!(from_tail(1.0), 0.0);
    }

    #[test]
    fn a_lasting_change_is_likely_a_single_outlier_is_not() {
        // Noise scores in [0, 2), one outlier of 6, then a lasting rise to 4.
        let mut s = noise(1000);
        s[500] = Some(6.0);
        for v in &mut s[800..820] {
            *v = Some(4.0);
        }
        let l = likelihoods(&s, 10, 500);
        assert!(l[..LEARNING + 9].iter().all(|&x| x == 0.0), "learning");
        let outlier = l[500..510].iter().copied().fold(0.0, f64::max);
        assert!(outlier < 0.5, "one outlier: {outlier}");
        // The lasting rise goes red (>= 0.5) once, at its start; while it stays red it is
        // shown yellow (0.3).
        let red: Vec<usize> = (800..830).filter(|&i| l[i] >= 0.5).collect();
        assert_eq!(red.len(), 1, "{:?}", &l[800..830]);
        assert!(red[0] < 810, "reported early: row {}", red[0]);
        assert!(l[red[0] + 1..820].iter().all(|&x| x == from_tail(YELLOW) || x < 0.5), "{:?}", &l[800..830]);
        assert!(l[red[0] + 1..820].contains(&from_tail(YELLOW)));
        assert!(l.iter().all(|x| (0.0..=1.0).contains(x)));
    }

    #[test]
    fn the_scale_grades_instead_of_saturating() {
        // Steady noise, then averages rising step by step: the likelihood rises step by step.
        let mut s = noise(600);
        for (k, v) in s[550..].iter_mut().enumerate() {
            *v = Some(1.0 + k as f64 * 0.02);
        }
        let l = likelihoods(&s, 10, 500);
        let rising: Vec<f64> = l[560..600].to_vec();
        assert!(rising.windows(2).all(|w| w[1] >= w[0]), "{rising:?}");
        assert!(rising.iter().filter(|&&x| x > 0.0 && x < 1.0).count() >= 10, "graded: {rising:?}");
    }
}
