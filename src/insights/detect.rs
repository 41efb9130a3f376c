//! The detector: a state machine over one series' minutes that opens and closes Insights.
//!
//! At each minute `t` it sums the observed counts and the baseline's expectations over the last
//! few minutes (3 for spikes, 10 for drops) and scores the sums with
//! [`model::deviation_score`]. An Insight **starts** when that score passes `start_score` (and
//! the counts are at least `min_ratio` times the expectation, or at most 1/`min_ratio` of it for
//! drops) while the current minute is itself off its expectation. It is dated from the first
//! minute of the current run of minutes off expectation. It **ends** when the score falls
//! below `end_score`; it is dated one minute after the last minute off expectation. The gap
//! between the two thresholds and the summing window are the hysteresis: one quiet minute
//! inside a burst lowers the sum but not below `end_score`, so it does not split the Insight.
//!
//! Everything here is a pure function of the series, so analysing history in one pass or in
//! any number of chunks (carrying the open Insight over) finds the same Insights.

use crate::model::{self, Baseline, BaselineParams};

/// The detector's parameters (docs/insights.md, "The model").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorParams {
    pub baseline: BaselineParams,
    /// Variance floor of the score, in calls² per minute.
    pub floor: f64,
    /// Minutes summed when scoring spikes.
    pub spike_window: usize,
    /// Drop windows, in minutes: `[0]` scores an open drop (it ends when this window's score
    /// falls below `end_score`); `[1]` is the longest window a drop may start on. A drop starts
    /// on the current run of near-silent minutes, on `[0]` or on `[1]`, whichever is unusual.
    pub drop_windows: [usize; 2],
    /// Most a drop may keep of its expected count (summed over the window).
    pub drop_max_share: f64,
    /// Score that starts a spike Insight.
    pub start_score: f64,
    /// Score that starts a drop Insight. Lower than for spikes because a count cannot fall
    /// below zero: a drop's score is at most `expected / sqrt(expected + floor)`.
    pub drop_start_score: f64,
    /// Score below which an open Insight ends.
    pub end_score: f64,
    /// Least ratio between observed and expected counts (either way) to start an Insight.
    pub min_ratio: f64,
    /// Minutes of history an account and region need before any Insight. AWS needs 36 hours;
    /// Prism waits 3 days, the least history in which a daily job can be told from a one-off
    /// burst (see [`model::baselines`]).
    pub warmup: usize,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams::with_sensitivity(1.0)
    }
}

impl DetectorParams {
    /// Defaults scaled by one knob: 2 finds weaker deviations (thresholds halved), 0.5 only
    /// stronger ones.
    pub fn with_sensitivity(sensitivity: f64) -> Self {
        let s = if sensitivity.is_finite() && sensitivity > 0.0 { sensitivity } else { 1.0 };
        DetectorParams {
            baseline: BaselineParams::default(),
            floor: 1.0,
            spike_window: 3,
            drop_windows: [10, 60],
            drop_max_share: 0.25,
            start_score: 6.0 / s,
            drop_start_score: 3.5 / s,
            end_score: 2.0 / s,
            min_ratio: 2.0,
            warmup: 3 * 1440,
        }
    }

    /// Minutes before an analysed minute that the detector reads.
    pub fn lookback(&self) -> usize {
        self.baseline.window
            + self.baseline.tolerance
            + self.baseline.smoothing
            + RECENT
            + self.spike_window.max(self.drop_windows[0]).max(self.drop_windows[1])
            + 1
    }
}

/// Which way the series moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Spike,
    Drop,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Spike => "spike",
            Direction::Drop => "drop",
        }
    }
}

/// An open Insight: what the detector carries from one minute (or run) to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub direction: Direction,
    /// First unusual minute.
    pub start: usize,
    /// The minute the Insight was recognised.
    pub detected: usize,
}

/// The detector's state for one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub open: Option<Open>,
    /// No Insight may start before this minute (the one after the last Insight closed).
    pub not_before: usize,
}

/// What happened at one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Started(Open),
    Ended { open: Open, end: usize, closed_at: usize },
}

/// Runs the detector over minutes `from..to` of `values` (with `baselines` for every minute),
/// updating `state`. `drops` enables drop detection (call rate only). Minute indexes are
/// positions in `values`; `history_origin` is the index of the first minute with any data, for
/// the warm-up.
pub fn run(
    values: &[f64],
    baselines: &[Baseline],
    range: std::ops::Range<usize>,
    history_origin: isize,
    drops: bool,
    p: &DetectorParams,
    state: &mut State,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let to = range.end.min(values.len()).min(baselines.len());
    for t in range.start..to {
        if let Some(open) = state.open {
            if score(values, baselines, t, open.direction, p) >= p.end_score {
                continue;
            }
            let last = (open.start..=t).rev().find(|&i| unusual(values[i], &baselines[i], open.direction, p)).unwrap_or(open.start);
            out.push(Transition::Ended { open, end: last + 1, closed_at: t });
            state.open = None;
            state.not_before = t + 1;
            continue;
        }
        if t < state.not_before || (t as isize - history_origin) < p.warmup as isize {
            continue;
        }
        for direction in [Direction::Spike, Direction::Drop] {
            if direction == Direction::Drop && !drops {
                continue;
            }
            if !unusual(values[t], &baselines[t], direction, p) || !starts(values, baselines, t, direction, p) {
                continue;
            }
            let mut start = t;
            while start > state.not_before && unusual(values[start - 1], &baselines[start - 1], direction, p) {
                start -= 1;
            }
            let open = Open { direction, start, detected: t };
            state.open = Some(open);
            out.push(Transition::Started(open));
            break;
        }
    }
    out
}

/// What a minute is compared with: spikes with `expected` (which includes recurring bursts),
/// drops with the steadier `level`.
fn reference(b: &Baseline, direction: Direction) -> f64 {
    match direction {
        Direction::Spike => b.expected,
        Direction::Drop => b.level,
    }
}

/// Minutes before a drop window that it must also fall from.
const RECENT: usize = 60;

/// Whether one minute is on the unusual side: above `expected` for a spike; for a drop, at most
/// `drop_max_share` of the level (a near-silent minute, not merely a quiet one).
fn unusual(x: f64, b: &Baseline, direction: Direction, p: &DetectorParams) -> bool {
    match direction {
        Direction::Spike => x > b.expected,
        Direction::Drop => x <= p.drop_max_share * b.level && b.level > 0.0,
    }
}

/// Whether the minutes ending at `t` start an Insight in `direction`.
fn starts(values: &[f64], baselines: &[Baseline], t: usize, direction: Direction, p: &DetectorParams) -> bool {
    match direction {
        Direction::Spike => {
            let (observed, expected) = sums(values, baselines, t, p.spike_window.max(1), direction);
            observed >= p.min_ratio * expected && score(values, baselines, t, direction, p) >= p.start_score
        }
        Direction::Drop => {
            // The silence so far is the natural window: a 14-minute outage of an API making
            // 1.4 calls a minute is scored on its 20 missing calls, not on 10 minutes' 14.
            let longest = p.drop_windows[1].max(1);
            let run = (0..longest).take_while(|&k| k <= t && unusual(values[t - k], &baselines[t - k], direction, p)).count();
            [run, p.drop_windows[0], longest].into_iter().filter(|&w| w > 0).any(|w| drop_window_starts(values, baselines, t, w, p))
        }
    }
}

/// Whether the `w` minutes ending at `t` hold a drop.
fn drop_window_starts(values: &[f64], baselines: &[Baseline], t: usize, w: usize, p: &DetectorParams) -> bool {
    let (observed, level) = sums(values, baselines, t, w, Direction::Drop);
    // A drop is judged against the lesser of the seasonal level and the hour before it: a
    // failure falls from the traffic just before, while a quiet weekend or holiday is quiet
    // from its start, so its silences are only as unusual as its own rate says.
    let before_end = (t + 1).saturating_sub(w);
    let before = &values[before_end.saturating_sub(RECENT)..before_end];
    let recent = if before.is_empty() { 0.0 } else { before.iter().sum::<f64>() / before.len() as f64 * w as f64 };
    let expected = level.min(recent);
    observed <= p.drop_max_share * expected && -model::deviation_score(observed, expected, p.floor) >= p.drop_start_score
}

/// Observed and expected counts summed over the `w` minutes ending at `t`.
fn sums(values: &[f64], baselines: &[Baseline], t: usize, w: usize, direction: Direction) -> (f64, f64) {
    let lo = (t + 1).saturating_sub(w);
    (values[lo..=t].iter().sum(), baselines[lo..=t].iter().map(|b| reference(b, direction)).sum())
}

/// The score of the last minutes at `t`, positive when they deviate in `direction`: over the
/// spike window with a floor per minute, or over the shorter drop window with one floor (a
/// silence needs no protection from single rare calls).
pub fn score(values: &[f64], baselines: &[Baseline], t: usize, direction: Direction, p: &DetectorParams) -> f64 {
    match direction {
        Direction::Spike => {
            let w = p.spike_window.max(1);
            let (observed, expected) = sums(values, baselines, t, w, direction);
            let n = (t + 1).min(w) as f64;
            model::deviation_score(observed, expected, n * p.floor)
        }
        Direction::Drop => {
            let (observed, expected) = sums(values, baselines, t, p.drop_windows[0].max(1), direction);
            -model::deviation_score(observed, expected, p.floor)
        }
    }
}

#[cfg(test)]
// `detect` scores the ranges of minutes it is given; one range is the usual case here.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// A week and a half of a steady 20 calls a minute with a daily job, then `edit`.
    fn series(edit: impl Fn(&mut [f64])) -> (Vec<f64>, Vec<Baseline>, DetectorParams) {
        let p = DetectorParams::default();
        let mut v: Vec<f64> = (0..11 * 1440).map(|i| 20.0 + ((i * 7919) % 9) as f64 - 4.0).collect();
        for d in 0..11 {
            v[d * 1440 + 125] += 400.0; // 02:05 every day
        }
        edit(&mut v);
        let b = model::baselines(&v, &p.baseline);
        (v, b, p)
    }

    fn detect(v: &[f64], b: &[Baseline], p: &DetectorParams, ranges: &[std::ops::Range<usize>]) -> Vec<Transition> {
        let mut state = State::default();
        ranges.iter().flat_map(|r| run(v, b, r.clone(), 0, true, p, &mut state)).collect()
    }

    #[test]
    fn steady_traffic_and_the_daily_job_are_not_unusual() {
        let (v, b, p) = series(|_| {});
        assert_eq!(detect(&v, &b, &p, &[0..v.len()]), vec![]);
    }

    #[test]
    fn a_spike_starts_and_ends_once_despite_a_quiet_minute() {
        let at = 9 * 1440 + 600;
        let (v, b, p) = series(|v| {
            v[at..at + 10].fill(200.0);
            v[at + 4] = 20.0; // one ordinary minute inside the burst
        });
        let found = detect(&v, &b, &p, &[0..v.len()]);
        assert_eq!(found.len(), 2, "{found:?}");
        let Transition::Started(open) = found[0] else { panic!("{found:?}") };
        assert_eq!((open.direction, open.start), (Direction::Spike, at));
        let Transition::Ended { end, .. } = found[1] else { panic!("{found:?}") };
        assert_eq!(end, at + 10);
    }

    #[test]
    fn a_drop_to_zero_is_found_and_drops_can_be_disabled() {
        let at = 9 * 1440 + 700;
        let (v, b, p) = series(|v| v[at..at + 30].fill(0.0));
        let found = detect(&v, &b, &p, &[0..v.len()]);
        let Transition::Started(open) = found[0] else { panic!("{found:?}") };
        assert_eq!((open.direction, open.start), (Direction::Drop, at));
        let Transition::Ended { end, .. } = found[1] else { panic!("{found:?}") };
        assert_eq!(end, at + 30);
        let mut state = State::default();
        assert!(run(&v, &b, 0..v.len(), 0, false, &p, &mut state).is_empty());
    }

    /// Drop Insights found in `v` (a plain series, no daily job).
    fn drops(v: &[f64]) -> Vec<Transition> {
        let p = DetectorParams::default();
        let b = model::baselines(v, &p.baseline);
        detect(v, &b, &p, &[0..v.len()])
    }

    #[test]
    fn a_quiet_apis_silence_is_scored_over_its_whole_run() {
        // 1.2 calls a minute; 15 silent minutes miss 18 calls. No 10-minute window is
        // significant (12 missing calls: score 3.3) and the hour holds most of its calls.
        let at = 9 * 1440 + 700;
        let mut v: Vec<f64> = (0..10 * 1440).map(|i| if i % 5 == 0 { 2.0 } else { 1.0 }).collect();
        v[at..at + 15].fill(0.0);
        let found = drops(&v);
        let Some(Transition::Started(open)) = found.first() else { panic!("{found:?}") };
        assert_eq!((open.direction, open.start), (Direction::Drop, at));
        // Ten silent minutes of the same API are chance, not an outage.
        let mut v: Vec<f64> = (0..10 * 1440).map(|i| if i % 5 == 0 { 2.0 } else { 1.0 }).collect();
        v[at..at + 10].fill(0.0);
        assert_eq!(drops(&v), vec![]);
    }

    #[test]
    fn a_quiet_day_is_judged_by_its_own_rate() {
        // Four calls a minute for 9 days, then a day at 1.5 a minute (a holiday) with 8 silent
        // minutes: unusual against the level (32 expected), chance at the day's own rate (12).
        let day = 9 * 1440;
        let mut v: Vec<f64> = (0..11 * 1440).map(|i| if i < day { 4.0 } else { (1 + i % 2) as f64 }).collect();
        v[day + 600..day + 608].fill(0.0);
        assert_eq!(drops(&v), vec![]);
        // The same silence on an ordinary day is an outage.
        let mut v = vec![4.0; 11 * 1440];
        v[day + 600..day + 608].fill(0.0);
        assert!(matches!(drops(&v).first(), Some(Transition::Started(o)) if o.start == day + 600), "{:?}", drops(&v));
    }

    #[test]
    fn nothing_starts_during_the_warm_up_nor_echoes_it() {
        let (v, b, p) = series(|v| v[100..110].fill(500.0));
        assert!(detect(&v, &b, &p, &[0..3000]).is_empty());
        // Days 1 and 2 expect part of the burst again; from day 3 it is left out.
        assert!(detect(&v, &b, &p, &[0..6 * 1440]).is_empty());
    }

    #[test]
    fn chunked_runs_find_what_one_pass_finds() {
        let at = 9 * 1440 + 600;
        let (v, b, p) = series(|v| {
            v[at..at + 25].fill(300.0);
            v[at + 100..at + 140].fill(0.0);
        });
        let whole = detect(&v, &b, &p, &[0..v.len()]);
        assert_eq!(whole.len(), 4);
        for cut in [at - 1, at, at + 1, at + 3, at + 24, at + 25, at + 26, at + 110] {
            assert_eq!(detect(&v, &b, &p, &[0..cut, cut..v.len()]), whole, "cut at {cut}");
        }
    }
}
