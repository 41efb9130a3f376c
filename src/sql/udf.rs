//! SQL functions for baselines and deviation scores, registered in every session. They call
//! the detector's own model ([`crate::model`]), so a query can recompute exactly what
//! the detector saw, on CloudTrail minutes or on any regularly sampled series.
//!
//! - `baseline(value, time, step, range [, season [, tolerance [, smoothing]]])`, a window
//!   function over rows ordered by `time`: the trailing baseline of each row's step as a struct
//!   `{mean, stddev, expected, level, history}`. `time` is a timestamp (then `step`, `range`,
//!   `season` are intervals) or an integer (then they are integers). Steps with no row count as
//!   zeros; rows in the same step are summed. `tolerance` (default 0) and `smoothing` (default
//!   5) are in steps.
//! - `deviation_score(observed, expected [, floor])`: `(observed - expected) / sqrt(expected + floor)`,
//!   floor 1 by default.
//! - `anomaly_probability(score)`: in [0, 1).
//!
//! For measurements (issue 20), where `baseline`'s counts model does not fit:
//! - `robust_baseline(value, time, step, range [, season [, combine [, smoothing]]])`, a window
//!   function like `baseline`, but a step without rows is missing, not zero; rows in one step
//!   are combined by `combine` (`'mean'` by default, `'sum'`, `'min'`, `'max'`, `'last'`); the
//!   struct is `{median, spread, expected, score, history}` with `score` the row's step's
//!   robust z-score against the local level (the median of the last `2 × smoothing + 1`
//!   steps) or, with `season`, the same time of season ± `smoothing` steps (default 1).
//! - `anomaly_likelihood(score [, short [, long]])`, a window function over rows in time
//!   order: how unusual the average of the last `short` scores (default 10) is against the
//!   `long` rows before (default 8,640), log-scaled to [0, 1].
//! - `novelty(value) OVER (ORDER BY time)`: each value's distance to the nearest earlier
//!   value ([`model::novelty`]); divided by the series' range, a score comparable across series.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, IntervalMonthDayNano};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    ColumnarValue, PartitionEvaluator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility, WindowUDF, WindowUDFImpl,
};
use datafusion::prelude::SessionContext;

use crate::model::{self, BaselineParams};

/// Registers the functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udwf(WindowUDF::from(BaselineUdwf::new()));
    ctx.register_udwf(WindowUDF::from(RobustBaselineUdwf { signature: Signature::variadic_any(Volatility::Immutable) }));
    ctx.register_udwf(WindowUDF::from(SeriesUdwf::anomaly_likelihood()));
    ctx.register_udwf(WindowUDF::from(SeriesUdwf::novelty()));
    ctx.register_udf(ScalarUDF::from(DeviationScore::new()));
    ctx.register_udf(ScalarUDF::from(AnomalyProbability::new()));
}

/// Largest dense series `baseline` builds for one partition (guards against a step far
/// smaller than the data's spacing).
const MAX_STEPS: i64 = 50_000_000;

#[derive(Debug, PartialEq, Eq, Hash)]
struct BaselineUdwf {
    signature: Signature,
}

impl BaselineUdwf {
    fn new() -> Self {
        BaselineUdwf { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

fn baseline_fields() -> Fields {
    Fields::from(vec![
        Field::new("mean", DataType::Float64, false),
        Field::new("stddev", DataType::Float64, false),
        Field::new("expected", DataType::Float64, false),
        Field::new("level", DataType::Float64, false),
        Field::new("history", DataType::UInt64, false),
    ])
}

impl WindowUDFImpl for BaselineUdwf {
    fn name(&self) -> &str {
        "baseline"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(BaselineEvaluator))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let n = args.input_fields().len();
        if !(4..=7).contains(&n) {
            return plan_err!("baseline(value, time, step, range [, season [, tolerance [, smoothing]]]) takes 4 to 7 arguments, got {n}");
        }
        Ok(Arc::new(Field::new(args.name(), DataType::Struct(baseline_fields()), true)))
    }
}

#[derive(Debug)]
struct BaselineEvaluator;

/// A time or duration argument as an integer: microseconds for timestamps and intervals,
/// the value itself for integers.
fn units(v: &ScalarValue, function: &str, what: &str) -> Result<i64> {
    let out = match v {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months: 0, days, nanoseconds })) => {
            i64::from(*days) * 86_400_000_000 + nanoseconds / 1_000
        }
        ScalarValue::IntervalDayTime(Some(d)) => i64::from(d.days) * 86_400_000_000 + i64::from(d.milliseconds) * 1_000,
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(_) => {
            return exec_err!("{function}: {what} must not use months or years (their length varies)");
        }
        other => match other.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(n))) => n,
            _ => return exec_err!("{function}: {what} must be an interval or an integer, got {other}"),
        },
    };
    Ok(out)
}

/// The constant argument `i` of a window function (`None` when not given), in units.
fn constant(values: &[ArrayRef], i: usize, function: &str, what: &str) -> Result<Option<i64>> {
    match values.get(i) {
        None => Ok(None),
        Some(a) => units(&ScalarValue::try_from_array(a, 0)?, function, what).map(Some),
    }
}

/// A text constant argument of a window function.
fn constant_text(values: &[ArrayRef], i: usize) -> Result<Option<String>> {
    match values.get(i) {
        None => Ok(None),
        Some(a) => match ScalarValue::try_from_array(a, 0)?.cast_to(&DataType::Utf8)? {
            ScalarValue::Utf8(s) => Ok(s),
            _ => Ok(None),
        },
    }
}

/// A partition's rows placed on a grid of `step`: each row's step (from the first row's),
/// `None` for a row without a time.
struct Grid {
    steps: usize,
    row: Vec<Option<usize>>,
}

impl Grid {
    /// `None` when no row has a time.
    fn new(function: &str, time: &ArrayRef, step: i64) -> Result<Option<Grid>> {
        let time = match time.data_type() {
            DataType::Timestamp(_, _) => datafusion::arrow::compute::cast(
                &datafusion::arrow::compute::cast(time, &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None))?,
                &DataType::Int64,
            )?,
            _ => datafusion::arrow::compute::cast(time, &DataType::Int64)?,
        };
        let time = time.as_primitive::<arrow::datatypes::Int64Type>();
        let at = |i: usize| time.is_valid(i).then(|| time.value(i).div_euclid(step));
        let (Some(first), Some(last)) = ((0..time.len()).filter_map(at).min(), (0..time.len()).filter_map(at).max()) else {
            return Ok(None);
        };
        if last - first >= MAX_STEPS {
            return exec_err!("{function}: the series spans {} steps, more than {MAX_STEPS}; use a larger step", last - first + 1);
        }
        let row = (0..time.len()).map(|i| at(i).map(|s| (s - first) as usize)).collect();
        Ok(Some(Grid { steps: (last - first + 1) as usize, row }))
    }
}

impl PartitionEvaluator for BaselineEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let fields = baseline_fields();
        if num_rows == 0 {
            return Ok(Arc::new(StructArray::new_null(fields, 0)));
        }
        let step = constant(values, 2, "baseline", "step")?.unwrap_or(1);
        let range = constant(values, 3, "baseline", "range")?.unwrap_or(0);
        let season = constant(values, 4, "baseline", "season")?.unwrap_or(0);
        if step <= 0 || range < step || season < 0 {
            return exec_err!("baseline: step must be positive and range at least one step (step {step}, range {range})");
        }
        let tolerance = constant(values, 5, "baseline", "tolerance")?.unwrap_or(0).max(0) as usize;
        // The detector's smoothing (5 steps) unless given.
        let smoothing = constant(values, 6, "baseline", "smoothing")?.unwrap_or(BaselineParams::default().smoothing as i64).max(0) as usize;
        let value = datafusion::arrow::compute::cast(&values[0], &DataType::Float64)?;
        let value = value.as_primitive::<arrow::datatypes::Float64Type>();
        let Some(grid) = Grid::new("baseline", &values[1], step)? else {
            return Ok(Arc::new(StructArray::new_null(fields, num_rows)));
        };
        // Counts: a step without rows is a zero, rows in one step are summed.
        let mut dense = vec![0.0; grid.steps];
        for (i, s) in grid.row.iter().enumerate() {
            if let Some(s) = s
                && value.is_valid(i)
            {
                dense[*s] += value.value(i);
            }
        }
        let params = BaselineParams { window: (range / step) as usize, season: (season / step) as usize, tolerance, smoothing };
        let b = model::baselines(&dense, &params);
        let rows: Vec<Option<model::Baseline>> = grid.row.iter().map(|s| s.map(|s| b[s])).collect();
        let nulls = arrow::buffer::NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        let get = |f: fn(&model::Baseline) -> f64| -> ArrayRef { Arc::new(rows.iter().map(|r| r.as_ref().map(f).unwrap_or(0.0)).collect::<Float64Array>()) };
        let columns: Vec<ArrayRef> = vec![
            get(|b| b.mean),
            get(|b| b.stddev),
            get(|b| b.expected),
            get(|b| b.level),
            Arc::new(rows.iter().map(|r| r.map(|b| b.history as u64).unwrap_or(0)).collect::<UInt64Array>()),
        ];
        Ok(Arc::new(StructArray::try_new(fields, columns, Some(nulls))?))
    }

    fn uses_window_frame(&self) -> bool {
        false
    }
}

/// `robust_baseline(value, time, step, range [, season [, combine [, smoothing]]])`: the
/// baseline of measurements ([`model::measurement`]) and each row's robust score.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RobustBaselineUdwf {
    signature: Signature,
}

fn robust_fields() -> Fields {
    Fields::from(vec![
        Field::new("median", DataType::Float64, false),
        Field::new("spread", DataType::Float64, false),
        Field::new("expected", DataType::Float64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("history", DataType::UInt64, false),
    ])
}

/// Steps either side of the same time of season that `robust_baseline` pools by default.
const ROBUST_SMOOTHING: i64 = 1;

impl WindowUDFImpl for RobustBaselineUdwf {
    fn name(&self) -> &str {
        "robust_baseline"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(RobustBaselineEvaluator))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let n = args.input_fields().len();
        if !(4..=7).contains(&n) {
            return plan_err!("robust_baseline(value, time, step, range [, season [, combine [, smoothing]]]) takes 4 to 7 arguments, got {n}");
        }
        Ok(Arc::new(Field::new(args.name(), DataType::Struct(robust_fields()), true)))
    }
}

#[derive(Debug)]
struct RobustBaselineEvaluator;

impl PartitionEvaluator for RobustBaselineEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let (name, fields) = ("robust_baseline", robust_fields());
        if num_rows == 0 {
            return Ok(Arc::new(StructArray::new_null(fields, 0)));
        }
        let step = constant(values, 2, name, "step")?.unwrap_or(1);
        let range = constant(values, 3, name, "range")?.unwrap_or(0);
        let season = constant(values, 4, name, "season")?.unwrap_or(0);
        if step <= 0 || range < 2 * step || season < 0 {
            return exec_err!("{name}: step must be positive, range at least two steps and season not negative (step {step}, range {range}, season {season})");
        }
        let combine = match constant_text(values, 5)? {
            None => model::Combine::Mean,
            Some(c) => match model::Combine::parse(&c) {
                Some(c) => c,
                None => return exec_err!("{name}: combine must be 'mean', 'sum', 'min', 'max' or 'last', got '{c}'"),
            },
        };
        let smoothing = constant(values, 6, name, "smoothing")?.unwrap_or(ROBUST_SMOOTHING).max(0) as usize;
        let value = datafusion::arrow::compute::cast(&values[0], &DataType::Float64)?;
        let value = value.as_primitive::<arrow::datatypes::Float64Type>();
        let Some(grid) = Grid::new(name, &values[1], step)? else {
            return Ok(Arc::new(StructArray::new_null(fields, num_rows)));
        };
        let cells = grid.row.iter().enumerate().filter_map(|(i, s)| s.filter(|_| value.is_valid(i)).map(|s| (s, value.value(i))));
        let series = combine.grid(grid.steps, cells);
        let params = model::MeasurementParams { window: (range / step) as usize, season: (season / step) as usize, smoothing };
        let b = model::measurement_baselines(&series, &params);
        let rows: Vec<Option<model::MeasurementBaseline>> = grid.row.iter().map(|s| s.map(|s| b[s])).collect();
        let nulls = arrow::buffer::NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        let get = |f: fn(&model::MeasurementBaseline) -> f64| -> ArrayRef {
            Arc::new(rows.iter().map(|r| r.as_ref().map(f).unwrap_or(0.0)).collect::<Float64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            get(|b| b.median),
            get(|b| b.spread),
            get(|b| b.expected),
            get(|b| b.score),
            Arc::new(rows.iter().map(|r| r.map(|b| b.history as u64).unwrap_or(0)).collect::<UInt64Array>()),
        ];
        Ok(Arc::new(StructArray::try_new(fields, columns, Some(nulls))?))
    }

    fn uses_window_frame(&self) -> bool {
        false
    }
}

/// A window function over rows in time order that gives each row one float, computed over
/// the whole partition at once: `anomaly_likelihood` and `novelty`.
#[derive(Debug)]
struct SeriesUdwf {
    name: &'static str,
    /// How it is called, for the error on a wrong number of arguments.
    usage: &'static str,
    arguments: std::ops::RangeInclusive<usize>,
    signature: Signature,
    evaluate: fn(&[ArrayRef]) -> Result<ArrayRef>,
}

impl SeriesUdwf {
    /// `anomaly_likelihood(score [, short [, long]])`: the log-scaled likelihood of each row's
    /// recent scores ([`model::likelihood`]).
    fn anomaly_likelihood() -> Self {
        SeriesUdwf {
            name: "anomaly_likelihood",
            usage: "anomaly_likelihood(score [, short [, long]])",
            arguments: 1..=3,
            signature: Signature::variadic_any(Volatility::Immutable),
            evaluate: |values| {
                let name = "anomaly_likelihood";
                let short = constant(values, 1, name, "short")?.unwrap_or(model::likelihood::DEFAULT_SHORT as i64);
                let long = constant(values, 2, name, "long")?.unwrap_or(model::likelihood::DEFAULT_LONG as i64);
                if short < 1 || long <= short {
                    return exec_err!("{name}: short must be at least 1 row and long more than short (short {short}, long {long})");
                }
                Ok(Arc::new(Float64Array::from(model::likelihoods(&floats(&values[0])?, short as usize, long as usize))))
            },
        }
    }

    /// `novelty(value)`: each value's distance to the nearest earlier value ([`model::novelty`]).
    fn novelty() -> Self {
        SeriesUdwf {
            name: "novelty",
            usage: "novelty(value)",
            arguments: 1..=1,
            signature: Signature::numeric(1, Volatility::Immutable),
            evaluate: |values| Ok(Arc::new(Float64Array::from(model::novelty(&floats(&values[0])?)))),
        }
    }
}

/// Equal by name: the name chooses the code (function pointers do not compare reliably).
impl PartialEq for SeriesUdwf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.signature == other.signature
    }
}

impl Eq for SeriesUdwf {}

impl std::hash::Hash for SeriesUdwf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.signature.hash(state);
    }
}

impl WindowUDFImpl for SeriesUdwf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(SeriesEvaluator(self.evaluate)))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let n = args.input_fields().len();
        if !self.arguments.contains(&n) {
            let (low, high) = (self.arguments.start(), self.arguments.end());
            let wanted = if low == high { format!("{low}") } else { format!("{low} to {high}") };
            return plan_err!("{} takes {wanted} arguments, got {n}", self.usage);
        }
        Ok(Arc::new(Field::new(args.name(), DataType::Float64, true)))
    }
}

#[derive(Debug)]
struct SeriesEvaluator(fn(&[ArrayRef]) -> Result<ArrayRef>);

impl PartitionEvaluator for SeriesEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        (self.0)(values)
    }

    fn uses_window_frame(&self) -> bool {
        false
    }
}

/// A window function's numeric argument as the model's input: one optional float a row.
fn floats(values: &ArrayRef) -> Result<Vec<Option<f64>>> {
    let values = datafusion::arrow::compute::cast(values, &DataType::Float64)?;
    Ok(values.as_primitive::<arrow::datatypes::Float64Type>().iter().collect())
}

/// Applies `f` row by row to float arguments, scalars broadcast.
fn map_floats(args: &[ColumnarValue], rows: usize, f: impl Fn(&[f64]) -> f64) -> Result<ColumnarValue> {
    let arrays: Vec<ArrayRef> =
        args.iter().map(|a| a.to_array(rows).and_then(|a| Ok(datafusion::arrow::compute::cast(&a, &DataType::Float64)?))).collect::<Result<_>>()?;
    let cols: Vec<&Float64Array> = arrays.iter().map(|a| a.as_primitive::<arrow::datatypes::Float64Type>()).collect();
    let mut buf = vec![0.0; cols.len()];
    let out: Float64Array = (0..rows)
        .map(|i| {
            for (j, c) in cols.iter().enumerate() {
                if c.is_null(i) {
                    return None;
                }
                buf[j] = c.value(i);
            }
            Some(f(&buf))
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn numeric_signature(arities: &[usize]) -> Signature {
    Signature::one_of(arities.iter().map(|&n| TypeSignature::Exact(vec![DataType::Float64; n])).collect(), Volatility::Immutable)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DeviationScore {
    signature: Signature,
}

impl DeviationScore {
    fn new() -> Self {
        DeviationScore { signature: numeric_signature(&[2, 3]) }
    }
}

impl ScalarUDFImpl for DeviationScore {
    fn name(&self) -> &str {
        "deviation_score"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_floats(&args.args, args.number_rows, |v| model::deviation_score(v[0], v[1], v.get(2).copied().unwrap_or(1.0)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AnomalyProbability {
    signature: Signature,
}

impl AnomalyProbability {
    fn new() -> Self {
        AnomalyProbability { signature: numeric_signature(&[1]) }
    }
}

impl ScalarUDFImpl for AnomalyProbability {
    fn name(&self) -> &str {
        "anomaly_probability"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_floats(&args.args, args.number_rows, |v| model::anomaly_probability(v[0]))
    }
}
