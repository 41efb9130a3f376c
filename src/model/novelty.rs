//! Novelty (issue 20): how far each value lies from every value the series took before it, the
//! distance to the nearest earlier value. A value inside the range already seen, close to
//! earlier values, scores about 0; a jump to a level never visited, above or below the range or
//! into a gap inside it, scores the size of the jump. Unlike a z-score it needs no model of the
//! noise or the season: the series' own history is the model, so it works alike on counts,
//! percentages, latencies and temperatures. Divided by the series' range it is comparable
//! across series, so one threshold serves all of them; see
//! `docs/insights.md#measurements-and-any-score-series` for its measured quality.
//!
//! This is the "spatial anomaly" of Numenta's NAB detector (a value beyond the range seen so
//! far) generalised to gaps inside the range, and graded by distance instead of a yes or no.

use std::collections::BTreeSet;

/// A float in a set: ordered by IEEE 754 total order (no NaN reaches it).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Each value's distance to the nearest value before it, in order: `None` for the first
/// value and for missing or non-finite ones, which do not enter the history either.
/// O(n log n) in the number of distinct values.
pub fn novelty(values: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut seen = BTreeSet::new();
    values
        .iter()
        .map(|v| {
            let x = v.filter(|x| x.is_finite())?;
            // -0.0 and 0.0 are one value.
            let key = Key(if x == 0.0 { 0.0 } else { x });
            let above = seen.range(key..).next().map(|k: &Key| k.0 - x);
            let below = seen.range(..key).next_back().map(|k: &Key| x - k.0);
            seen.insert(key);
            match (above, below) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_to_the_nearest_earlier_value() {
        let v = [Some(10.0), Some(12.0), None, Some(11.5), Some(10.0), Some(20.0), Some(f64::NAN), Some(15.0), Some(-5.0), Some(-0.0), Some(0.0)];
        let got = novelty(&v);
        let want = [None, Some(2.0), None, Some(0.5), Some(0.0), Some(8.0), None, Some(3.0), Some(15.0), Some(5.0), Some(0.0)];
        assert_eq!(got, want);
    }

    #[test]
    fn a_gap_inside_the_range_is_novel_too() {
        // A series that lived at 0 and 100 steps to 50: far from both, though inside the range.
        let mut v: Vec<Option<f64>> = (0..100).map(|i| Some(if i % 2 == 0 { 0.0 } else { 100.0 })).collect();
        v.push(Some(50.0));
        v.push(Some(51.0));
        let got = novelty(&v);
        assert_eq!(got[100], Some(50.0));
        assert_eq!(got[101], Some(1.0));
    }
}
