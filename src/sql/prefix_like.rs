//! `column LIKE 'prefix%'` on string views, decided from the views' first bytes where it can.
//!
//! A string view holds its value's length and first four bytes, so a prefix match rejects
//! most rows without reading the string. Arrow's LIKE kernel reads every row's prefix from the
//! data buffer (for values over 12 bytes) and collects one `bool` per row: on 4.5M source
//! addresses, `sourceipaddress LIKE '185.220.%'` cost 25 ms more than an equality test. The
//! filter predicate is replaced by [`PrefixMatch`] (by `per_value`'s rule, which would
//! otherwise wrap the LIKE); the scan keeps the original LIKE for pruning by statistics.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringViewArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, LikeExpr, Literal};

/// `expr LIKE 'prefix%'` (or `NOT LIKE`) on a string-view column.
#[derive(Debug)]
pub struct PrefixMatch {
    /// The column.
    expr: Arc<dyn PhysicalExpr>,
    /// The LIKE's pattern, for display and for arrays that are not string views.
    pattern: Arc<dyn PhysicalExpr>,
    prefix: Vec<u8>,
    negated: bool,
}

/// A [`PrefixMatch`] for `e`, if it is a case-sensitive LIKE of a string-view column with a
/// literal pattern whose only wildcard is one `%` at its end (no `_`, no escape).
pub(super) fn rewrite(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(like) = e.downcast_ref::<LikeExpr>() else { return Ok(None) };
    if like.case_insensitive() || like.expr().downcast_ref::<Column>().is_none() || like.expr().data_type(schema)? != DataType::Utf8View {
        return Ok(None);
    }
    let Some(literal) = like.pattern().downcast_ref::<Literal>() else { return Ok(None) };
    let (ScalarValue::Utf8(Some(pattern)) | ScalarValue::Utf8View(Some(pattern)) | ScalarValue::LargeUtf8(Some(pattern))) = literal.value() else {
        return Ok(None);
    };
    let Some(prefix) = pattern.strip_suffix('%').filter(|p| !p.contains(['%', '_', '\\'])) else { return Ok(None) };
    Ok(Some(Arc::new(PrefixMatch {
        expr: Arc::clone(like.expr()),
        pattern: Arc::clone(like.pattern()),
        prefix: prefix.as_bytes().to_vec(),
        negated: like.negated(),
    })))
}

/// Whether each view's value starts with `prefix` (a null's answer is meaningless).
fn starts_with(views: &StringViewArray, prefix: &[u8]) -> BooleanBuffer {
    let p = prefix.len();
    // The prefix's first (up to) four bytes, where a view keeps its value's first four.
    let h = p.min(4);
    let mut head = [0u8; 4];
    head[..h].copy_from_slice(&prefix[..h]);
    let head = u32::from_le_bytes(head);
    let mask = u32::MAX.checked_shl(8 * h as u32).map_or(u32::MAX, |m| !m);
    let (ids, buffers) = (views.views(), views.data_buffers());
    BooleanBuffer::collect_bool(views.len(), |row| {
        let view = ids[row];
        let len = view as u32 as usize;
        if len < p || (view >> 32) as u32 & mask != head {
            return false;
        }
        if p <= 4 {
            return true;
        }
        if len <= 12 {
            // Inline: the value is bytes 4.. of the view.
            return view.to_le_bytes()[4..4 + p] == *prefix;
        }
        let (buffer, offset) = ((view >> 64) as u32 as usize, (view >> 96) as u32 as usize);
        buffers.get(buffer).and_then(|b| b.get(offset..offset + p)) == Some(prefix)
    })
}

impl PhysicalExpr for PrefixMatch {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let value = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(views) = value.as_string_view_opt() else {
            let like = LikeExpr::new(self.negated, false, Arc::clone(&self.expr), Arc::clone(&self.pattern));
            return like.evaluate(batch);
        };
        let matched = starts_with(views, &self.prefix);
        let matched = if self.negated { !&matched } else { matched };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(matched, views.nulls().cloned()))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([expr]) => Ok(Arc::new(PrefixMatch { expr, pattern: Arc::clone(&self.pattern), prefix: self.prefix.clone(), negated: self.negated })),
            Err(_) => Err(DataFusionError::Internal("a prefix match takes one expression".into())),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)?;
        write!(f, " {}LIKE ", if self.negated { "NOT " } else { "" })?;
        self.pattern.fmt_sql(f)
    }
}

impl fmt::Display for PrefixMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}LIKE {} (prefix)", self.expr, if self.negated { "NOT " } else { "" }, self.pattern)
    }
}

impl PartialEq for PrefixMatch {
    fn eq(&self, other: &Self) -> bool {
        self.expr.as_ref() == other.expr.as_ref() && self.prefix == other.prefix && self.negated == other.negated
    }
}

impl Eq for PrefixMatch {}

impl Hash for PrefixMatch {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
        self.prefix.hash(state);
        self.negated.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Short (inline) and long values, values shorter than the prefixes, multi-byte text,
    /// empty strings and nulls.
    fn values() -> StringViewArray {
        StringViewArray::from(vec![
            Some("185.220.101.4"),
            Some("185.220.1"),
            Some("185.22"),
            Some("185.221.0.1"),
            Some("10.0.0.185"),
            None,
            Some(""),
            Some("arn:aws:iam::123456789012:user/ops"),
            Some("arn:aws:iam::123456789012:role/ops"),
            Some("arn:aws:iam::12"),
            Some("été-2024/ünïcode and then a long tail"),
            Some("185.220.101.4"),
        ])
    }

    /// The answers of DataFusion's LIKE and of the rewritten filter for each pattern, compared.
    #[tokio::test]
    async fn prefix_matches_answer_as_like_does() {
        let values = values();
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new("s", DataType::Utf8View, true)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).unwrap();
        let patterns =
            ["185.220.%", "185.%", "18%", "%", "185.220.101.4%", "arn:aws:iam::123456789012:user/%", "arn:aws:iam::12%", "été-%", "x%", "185.220.101.45%"];
        for pattern in patterns {
            for negated in [false, true] {
                let like: Arc<dyn PhysicalExpr> =
                    Arc::new(LikeExpr::new(negated, false, Arc::new(Column::new("s", 0)), Arc::new(Literal::new(ScalarValue::Utf8View(Some(pattern.into()))))));
                let prefix = rewrite(&like, &schema).unwrap().unwrap_or_else(|| panic!("{pattern} not rewritten"));
                let expected = like.evaluate(&batch).unwrap().into_array(batch.num_rows()).unwrap();
                let got = prefix.evaluate(&batch).unwrap().into_array(batch.num_rows()).unwrap();
                assert_eq!(got.as_boolean(), expected.as_boolean(), "{pattern} negated={negated}");
            }
        }
        // Not prefixes: other wildcards, escapes, ILIKE.
        for pattern in ["%220%", "185_220%", "185\\%%", "185.220.", "a%b%"] {
            let like: Arc<dyn PhysicalExpr> =
                Arc::new(LikeExpr::new(false, false, Arc::new(Column::new("s", 0)), Arc::new(Literal::new(ScalarValue::Utf8(Some(pattern.into()))))));
            assert!(rewrite(&like, &schema).unwrap().is_none(), "{pattern}");
        }
        let ilike: Arc<dyn PhysicalExpr> =
            Arc::new(LikeExpr::new(false, true, Arc::new(Column::new("s", 0)), Arc::new(Literal::new(ScalarValue::Utf8(Some("a%".into()))))));
        assert!(rewrite(&ilike, &schema).unwrap().is_none());
    }

    /// Through SQL, in a session with Prism's rules: the filter uses the prefix match and
    /// counts what DataFusion alone counts.
    #[tokio::test]
    async fn sql_filters_use_the_prefix_match() {
        let values: arrow::array::ArrayRef = Arc::new(values());
        let field = |name| arrow::datatypes::Field::new(name, DataType::Utf8View, true);
        let schema = Arc::new(Schema::new(vec![field("s"), field("t")]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::clone(&values), values]).unwrap();
        // Two columns: one LIKE over both would be evaluated per value instead (`per_value`).
        let sql = "SELECT count(*) FROM t WHERE s LIKE '185.220.%' OR t NOT LIKE 'arn:%'";
        let mut answers = Vec::new();
        for rule in [false, true] {
            let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
            let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(super::super::per_value::EvaluatePerValue)) } else { builder };
            let ctx = SessionContext::new_with_state(builder.build());
            ctx.register_table("t", Arc::new(MemTable::try_new(Arc::clone(&schema), vec![vec![batch.clone()]]).unwrap())).unwrap();
            let df = ctx.sql(sql).await.unwrap();
            let plan = datafusion::physical_plan::displayable(df.clone().create_physical_plan().await.unwrap().as_ref()).indent(true).to_string();
            assert_eq!(plan.matches("(prefix)").count(), if rule { 2 } else { 0 }, "{plan}");
            let batches = df.collect().await.unwrap();
            answers.push(arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string());
        }
        assert_eq!(answers[0], answers[1]);
        assert!(answers[0].contains("| 8 "), "{}", answers[0]);
    }
}
