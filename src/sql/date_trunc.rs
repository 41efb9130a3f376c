//! `date_trunc` on the lake's UTC timestamps at the speed of zone-less ones.
//!
//! `eventtime` is `Timestamp(µs, "UTC")`. DataFusion's `date_trunc` truncates a timestamp
//! without a zone to the hour or day with integer arithmetic, but one with any zone, UTC
//! included, through a calendar conversion per row: `date_trunc('hour', eventtime)` over 4.5M
//! events took 0.50 s, against 0.14 s for the same values without the zone. UTC has no offsets
//! to convert, so this wrapper hands DataFusion's own function the values without the zone and
//! puts the zone back on the result; everything else (other zones, scalars, planning) is
//! DataFusion's.

use std::sync::Arc;

use arrow::array::{ArrayRef, make_array};
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl};

/// DataFusion's `date_trunc` (and `datetrunc`), faster on UTC timestamp arrays.
pub fn date_trunc() -> ScalarUDF {
    ScalarUDF::new_from_impl(UtcDateTrunc { inner: datafusion::functions::datetime::date_trunc() })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateTrunc {
    inner: Arc<ScalarUDF>,
}

/// `array` with its type changed to `to` (same values, same buffers).
fn retyped(array: &ArrayRef, to: DataType) -> Result<ArrayRef> {
    Ok(make_array(array.to_data().into_builder().data_type(to).build()?))
}

impl ScalarUDFImpl for UtcDateTrunc {
    delegate_to_inner_udf!();

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let utc = match args.args.get(1) {
            Some(ColumnarValue::Array(a)) => match a.data_type() {
                DataType::Timestamp(unit, Some(tz)) if matches!(tz.as_ref(), "UTC" | "+00:00") => Some((a.clone(), *unit, tz.clone())),
                _ => None,
            },
            _ => None,
        };
        let Some((array, unit, tz)) = utc else { return self.inner.invoke_with_args(args) };
        args.args[1] = ColumnarValue::Array(retyped(&array, DataType::Timestamp(unit, None))?);
        match self.inner.invoke_with_args(args)? {
            ColumnarValue::Array(result) => Ok(ColumnarValue::Array(retyped(&result, DataType::Timestamp(unit, Some(tz)))?)),
            scalar => Ok(scalar),
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    /// The printed result of `sql` over timestamps around the epoch, leap days and year ends,
    /// with this `date_trunc` or DataFusion's.
    async fn run(sql: &str, ours: bool) -> String {
        let ctx = SessionContext::new();
        if ours {
            ctx.register_udf(date_trunc());
        }
        ctx.sql("SET datafusion.execution.time_zone = 'UTC'").await.unwrap();
        let values = "('1969-12-31T23:59:59.999999Z'), ('1970-01-01T00:00:00Z'), ('2024-02-29T23:30:15.123456Z'), ('2023-12-31T23:59:59.5Z'), ('2024-06-01T12:34:56.789Z'), (NULL)";
        ctx.sql(&format!("CREATE TABLE t AS SELECT arrow_cast(to_timestamp(column1), 'Timestamp(µs, \"UTC\")') AS ts FROM (VALUES {values})")).await.unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn same_answers_as_datafusion_at_every_granularity_and_the_zone_is_kept() {
        for g in ["microsecond", "millisecond", "second", "minute", "hour", "day", "week", "month", "quarter", "year"] {
            let sql =
                format!("SELECT ts, date_trunc('{g}', ts) AS t, arrow_typeof(date_trunc('{g}', ts)) AS type, datetrunc('{g}', ts) AS alias FROM t ORDER BY ts");
            let ours = run(&sql, true).await;
            assert_eq!(ours, run(&sql, false).await, "{g}");
            assert!(ours.contains("Timestamp(µs, \"UTC\")"), "{g}: {ours}");
        }
        let hours = run("SELECT date_trunc('hour', ts) AS t FROM t WHERE ts > TIMESTAMP '2024-02-01T00:00:00Z' ORDER BY 1", true).await;
        assert!(hours.contains("2024-02-29T23:00:00Z") && hours.contains("2024-06-01T12:00:00Z"), "{hours}");
    }
}
