//! Few-valued strings read as Parquet stores them: a dictionary and each row's key.
//!
//! The lake stores user agents, ARNs, error codes and the like ([`crate::lake::FEW_VALUED_COLUMNS`])
//! as a dictionary per row group and a key per row. Read as string views, each row becomes a
//! 16-byte view that later operators hash (`SELECT useridentity['arn'], count(*) … GROUP BY 1`
//! spent a third of its time grouping 4.5M views of 28 values) or test one by one. Where a
//! scan's few-valued column is only filtered (its LIKE or comparison, under a filter that does
//! not pass the column on), or only counted by (the one key of a [`PerBatchCountExec`]),
//! [`ReadDictionaries`] has the Parquet reader return it as `Dictionary(Int32, Utf8)`:
//! - a filter's conditions on that one column are evaluated once per dictionary value and
//!   spread to the rows by key ([`OnValues`]);
//! - the count groups rows by key ([`super::per_batch`]), and turns the groups' keys back
//!   into views;
//! - a [`DictionaryCastExec`] above the rewritten part turns the column back into views for
//!   any other reader, so the plan's types above are unchanged.
//!
//! Not used on distributed sessions, like the other rules over Prism's own operators.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, new_null_array};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Int32Type, Schema, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_expr::projection::{ProjectionExpr, ProjectionExprs};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream};
use futures::StreamExt;

use super::per_batch::PerBatchCountExec;
use super::scan::{NestedViews, with_dictionaries};

/// The physical optimizer rule (see the module doc). Runs after [`super::per_value`] and
/// [`super::per_batch`], whose nodes it builds on.
#[derive(Debug, Default)]
pub struct ReadDictionaries;

impl PhysicalOptimizerRule for ReadDictionaries {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let options = Arc::new(config.clone());
        plan.transform_down(|node| {
            if let Some(count) = node.downcast_ref::<PerBatchCountExec>()
                && let [key] = count.keys()
                && let Some(key) = key.downcast_ref::<Column>()
                && let Some(input) = rewrite(count.input(), Some(key.index()), &options)?
            {
                let rebuilt = Arc::clone(&node).replace_children(vec![input], super::plan_rules::recompute())?;
                return Ok(Transformed::new(rebuilt, true, TreeNodeRecursion::Jump));
            }
            if node.downcast_ref::<FilterExec>().is_some()
                && let Some(rebuilt) = rewrite(&node, None, &options)?
            {
                return Ok(Transformed::new(rebuilt, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(node))
        })
        .data()
    }

    fn name(&self) -> &str {
        "read_dictionaries"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `top` (a lake scan, or a filter over one) with its few-valued columns read as dictionaries
/// where only the filter's conditions or the consumer read them: the consumer reads output
/// column `counted_by` (if any) as a dictionary. None when no column qualifies.
fn rewrite(top: &Arc<dyn ExecutionPlan>, counted_by: Option<usize>, options: &Arc<ConfigOptions>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let filter = top.downcast_ref::<FilterExec>();
    let scan = filter.map_or(top, |f| f.input());
    let Some(config) = super::plan_rules::file_scan(scan) else { return Ok(None) };
    let Some(source) = config.file_source().downcast_ref::<ParquetSource>() else { return Ok(None) };
    let (Some(factory), Some(projection)) = (source.parquet_file_reader_factory(), FileSource::projection(source)) else { return Ok(None) };
    let table = FileSource::table_schema(source);
    let file_schema = table.file_schema();
    let exprs: Vec<&ProjectionExpr> = projection.iter().collect();

    // The scan's outputs that are a few-valued string, by their dotted path, read by nothing
    // else in the scan: a struct passed on whole, or a pushed-down filter, keeps its type.
    let mut chosen: BTreeMap<usize, String> = exprs.iter().enumerate().filter_map(|(j, p)| few_valued(&p.expr, file_schema).map(|path| (j, path))).collect();
    let mut whole: HashSet<usize> = HashSet::new();
    for (j, p) in exprs.iter().enumerate() {
        if !chosen.contains_key(&j) {
            whole.extend(collect_columns(&p.expr).iter().map(Column::index));
        }
    }
    if source.table_parquet_options().global.pushdown_filters
        && let Some(predicate) = FileSource::filter(source)
    {
        whole.extend(collect_columns(&predicate).iter().map(Column::index));
    }
    chosen.retain(|j, _| collect_columns(&exprs[*j].expr).iter().all(|c| !whole.contains(&c.index())));

    // Above the scan: a filter's conditions on one chosen column are evaluated on its values;
    // a chosen column read any other way, or passed on to anything but the count, is not chosen.
    let mut refused: HashSet<usize> = HashSet::new();
    let passed_on: Vec<usize> = match filter {
        Some(f) => {
            refuse_bare(f.predicate(), &chosen, &mut refused)?;
            f.projection().as_ref().map_or_else(|| (0..scan.schema().fields().len()).collect(), |p| p.to_vec())
        }
        None => (0..scan.schema().fields().len()).collect(),
    };
    for (position, j) in passed_on.iter().enumerate() {
        if Some(position) != counted_by {
            refused.insert(*j);
        }
    }
    // A path also read by an output not chosen (the same field filtered and passed on, as two
    // outputs) keeps its type for both.
    let kept_as_views: HashSet<String> = refused.iter().filter_map(|j| chosen.get(j).cloned()).collect();
    chosen.retain(|j, path| !refused.contains(j) && !kept_as_views.contains(path));
    if chosen.is_empty() {
        return Ok(None);
    }

    let mut paths: Vec<String> = chosen.values().cloned().collect();
    paths.sort();
    paths.dedup();
    let keyed_schema = Arc::new(with_dictionaries(file_schema, &paths));
    let keyed_table = TableSchema::builder(Arc::clone(&keyed_schema))
        .with_table_partition_cols(table.table_partition_cols().iter().cloned().collect::<Vec<FieldRef>>())
        .with_virtual_columns(table.virtual_columns().clone())
        .build();
    let options_read = source.table_parquet_options().clone();
    let hint = options_read.global.metadata_size_hint;
    let mut keyed = ParquetSource::new(keyed_table.clone())
        .with_table_parquet_options(options_read)
        .with_parquet_file_reader_factory(Arc::new(NestedViews::new(Arc::clone(factory), paths)));
    if let Some(hint) = hint {
        keyed = keyed.with_metadata_size_hint(hint);
    }
    // The scan's own predicate (statistics pruning, DataFusion's dynamic filters) compares the
    // column as the plan typed it: it reads the chosen ones through a cast back to views,
    // which the pruning follows to the column's statistics.
    if let Some(predicate) = FileSource::filter(source) {
        let retyped: Vec<&Arc<dyn PhysicalExpr>> = chosen.keys().map(|j| &exprs[*j].expr).collect();
        keyed = keyed.with_predicate(read_as_views(predicate, &retyped)?);
    }
    let mut projected = Vec::with_capacity(exprs.len());
    for (j, p) in exprs.iter().enumerate() {
        let expr = match chosen.contains_key(&j) {
            true => retyped(&p.expr, keyed_table.table_schema(), options)?,
            false => Arc::clone(&p.expr),
        };
        projected.push(ProjectionExpr::new(expr, p.alias.clone()));
    }
    let keyed = keyed
        .try_pushdown_projection(&ProjectionExprs::new(projected))?
        .ok_or_else(|| DataFusionError::Internal("a Parquet source refused its own projection".into()))?;
    let scanned: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(FileScanConfigBuilder::from(config.clone()).with_source(keyed).build());

    let rewritten: Arc<dyn ExecutionPlan> = match filter {
        Some(f) => {
            let kept = 2 * options.execution.target_partitions.max(1);
            let predicate = on_values(f.predicate(), &chosen, &scan.schema(), kept)?;
            Arc::new(
                FilterExecBuilder::new(predicate, scanned)
                    .apply_projection_by_ref(f.projection().as_ref())?
                    .with_default_selectivity(f.default_selectivity())
                    .with_batch_size(f.batch_size())
                    .with_fetch(f.fetch())
                    .build()?,
            )
        }
        None => scanned,
    };
    if rewritten.schema() == top.schema() {
        return Ok(Some(rewritten));
    }
    Ok(Some(Arc::new(DictionaryCastExec::new(rewritten, top.schema()))))
}

/// The dotted path of the few-valued string `expr` reads from the files: a column, or a
/// field of a struct column (`useridentity['arn']`), as a view.
pub(super) fn few_valued(expr: &Arc<dyn PhysicalExpr>, files: &Schema) -> Option<String> {
    few_valued_as(expr, files).filter(|(_, t)| *t == DataType::Utf8View).map(|(path, _)| path)
}

/// [`few_valued`] in whatever type the scan reads it (a view, or a dictionary once
/// [`ReadDictionaries`] chose it), with that type.
pub(super) fn few_valued_as(expr: &Arc<dyn PhysicalExpr>, files: &Schema) -> Option<(String, DataType)> {
    let leaf = |column: &Column| files.fields().get(column.index()).filter(|f| f.name() == column.name());
    let (path, t) = if let Some(column) = expr.downcast_ref::<Column>() {
        let field = leaf(column)?;
        (field.name().clone(), field.data_type().clone())
    } else {
        let call = expr.downcast_ref::<ScalarFunctionExpr>().filter(|f| f.fun().name() == "get_field")?;
        let [column, name] = call.args() else { return None };
        let field = leaf(column.downcast_ref::<Column>()?)?;
        let name = name.downcast_ref::<Literal>()?.value().try_as_str().flatten()?;
        let DataType::Struct(children) = field.data_type() else { return None };
        let (_, child) = children.find(name)?;
        (format!("{}.{name}", field.name()), child.data_type().clone())
    };
    crate::lake::FEW_VALUED_COLUMNS.contains(&path.as_str()).then_some((path, t))
}

/// `predicate` with each of `retyped` (the chosen outputs' expressions: a column, or a field
/// of a struct column) in it cast to a view, as it was typed.
fn read_as_views(predicate: Arc<dyn PhysicalExpr>, retyped: &[&Arc<dyn PhysicalExpr>]) -> Result<Arc<dyn PhysicalExpr>> {
    predicate
        .transform_down(|e| {
            if retyped.iter().any(|r| r.as_ref() == e.as_ref()) {
                let cast: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(e, DataType::Utf8View, None));
                return Ok(Transformed::new(cast, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(e))
        })
        .data()
}

/// `expr` (a chosen column or field) over the scan's table schema with dictionaries: its
/// declared type follows.
fn retyped(expr: &Arc<dyn PhysicalExpr>, schema: &Schema, options: &Arc<ConfigOptions>) -> Result<Arc<dyn PhysicalExpr>> {
    match expr.downcast_ref::<ScalarFunctionExpr>() {
        Some(call) => Ok(Arc::new(ScalarFunctionExpr::try_new(Arc::new(call.fun().clone()), call.args().to_vec(), schema, Arc::clone(options))?)),
        None => Ok(Arc::clone(expr)),
    }
}

/// Whether `e` is a condition on one chosen column that [`OnValues`] can take: the column in
/// something, deterministic.
fn on_one_value(e: &Arc<dyn PhysicalExpr>, chosen: &BTreeMap<usize, String>) -> Result<bool> {
    let columns = collect_columns(e);
    let [column] = columns.iter().collect::<Vec<_>>()[..] else { return Ok(false) };
    Ok(chosen.contains_key(&column.index()) && e.downcast_ref::<Column>().is_none() && !e.exists(|n| Ok(n.is_volatile_node()))?)
}

/// Adds to `refused` the chosen columns `predicate` reads other than through a condition
/// [`OnValues`] can take.
fn refuse_bare(predicate: &Arc<dyn PhysicalExpr>, chosen: &BTreeMap<usize, String>, refused: &mut HashSet<usize>) -> Result<()> {
    predicate.apply(|e| {
        if on_one_value(e, chosen)? {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(c) = e.downcast_ref::<Column>() {
            refused.insert(c.index());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// `predicate` with its largest conditions on one chosen column wrapped in [`OnValues`].
fn on_values(predicate: &Arc<dyn PhysicalExpr>, chosen: &BTreeMap<usize, String>, schema: &Schema, kept: usize) -> Result<Arc<dyn PhysicalExpr>> {
    Arc::clone(predicate)
        .transform_down(|e| {
            if on_one_value(&e, chosen)? {
                // Over a dictionary's values, which are distinct, `per_value`'s grouping of a
                // batch's values would only be done again.
                let e = e.downcast_ref::<super::per_value::PerValue>().map_or_else(|| Arc::clone(&e), |p| Arc::clone(p.inner()));
                let wrapped: Arc<dyn PhysicalExpr> = Arc::new(OnValues::new(e, schema, kept)?);
                return Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(e))
        })
        .data()
}

/// An expression of one string column, planned over views, evaluated over a dictionary's
/// values (and a null) and spread to the rows by their keys.
pub struct OnValues {
    inner: Arc<dyn PhysicalExpr>,
    /// The column, in the input batch.
    column: Column,
    /// `inner` over a batch of that one column (its index 0), as views.
    alone: Arc<dyn PhysicalExpr>,
    /// `inner`'s result as planned, over views: the type it keeps over a dictionary.
    returns: FieldRef,
    /// The answers for the last dictionaries seen ([`OnValues::answers`]).
    kept: Mutex<Vec<(ArrayRef, ArrayRef)>>,
    /// How many: two for each partition read at once (`target_partitions`), which share this
    /// expression.
    keep: usize,
}

impl OnValues {
    fn new(inner: Arc<dyn PhysicalExpr>, schema: &Schema, keep: usize) -> Result<OnValues> {
        let column = collect_columns(&inner)
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("evaluating over dictionary values an expression without a column".into()))?;
        let alone = super::plan_rules::over_its_column(&inner)?;
        let returns = inner.return_field(schema)?;
        Ok(OnValues { inner, column, alone, returns, kept: Mutex::default(), keep })
    }

    /// `alone`'s answer for each of a dictionary's `values` and, after them, for a null. The
    /// batches of a row group share its dictionary (the same array): the answers of the last
    /// few dictionaries seen are kept, with the dictionaries, so a kept one is never freed
    /// and another taken for it at the same address.
    fn answers(&self, values: &ArrayRef) -> Result<ArrayRef> {
        let found = |kept: &Vec<(ArrayRef, ArrayRef)>| kept.iter().find(|(v, _)| same_values(v, values)).map(|(_, a)| Arc::clone(a));
        if let Some(answers) = self.kept.lock().ok().and_then(|kept| found(&kept)) {
            return Ok(answers);
        }
        let with_null = arrow::compute::concat(&[values.as_ref(), new_null_array(values.data_type(), 1).as_ref()])?;
        let answers = self.over(&with_null)?;
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= self.keep {
                kept.remove(0);
            }
            kept.push((Arc::clone(values), Arc::clone(&answers)));
        }
        Ok(answers)
    }

    /// `alone` over `values`, as views.
    fn over(&self, values: &ArrayRef) -> Result<ArrayRef> {
        let viewed = arrow::compute::cast(values, &DataType::Utf8View)?;
        let field = Field::new(self.column.name(), DataType::Utf8View, true);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![viewed])?;
        self.alone.evaluate(&batch)?.into_array(values.len())
    }
}

/// Whether `a` and `b` are the same dictionary values: the same array, or (as Parquet's
/// reader hands each batch of a row group a new array over the dictionary's buffers) strings
/// over the same buffers.
fn same_values(a: &ArrayRef, b: &ArrayRef) -> bool {
    match (a.as_string_opt::<i32>(), b.as_string_opt::<i32>()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.offsets().inner().inner().as_ptr() == b.offsets().inner().inner().as_ptr()
                && a.values().as_ptr() == b.values().as_ptr()
                && a.nulls() == b.nulls()
        }
        _ => Arc::ptr_eq(a, b),
    }
}

impl PhysicalExpr for OnValues {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(self.returns.data_type().clone())
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(self.returns.is_nullable())
    }

    fn return_field(&self, _input_schema: &Schema) -> Result<FieldRef> {
        Ok(Arc::clone(&self.returns))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let array = batch.column(self.column.index());
        let Some(dictionary) = array.as_dictionary_opt::<Int32Type>() else {
            return Ok(ColumnarValue::Array(self.over(array)?));
        };
        let values = dictionary.values();
        let answers = self.answers(values)?;
        // Each row's place among the answers: its key, or the null's after the values.
        let null = values.len();
        let keys = dictionary.keys();
        let raw = keys.values();
        let valid = keys.nulls().filter(|n| n.null_count() > 0);
        // A condition's answers: one bit per row from its key, packed 64 at a time, then the
        // null rows' bits set to the null's answer.
        if let Some(answers) = answers.as_boolean_opt() {
            let spread = |of: &dyn Fn(usize) -> bool| {
                let by_place: Vec<bool> = (0..=null).map(of).collect();
                // The same answer for every value (no user agent of the row group matches):
                // no row's key is read.
                let bits = match by_place[..null] {
                    [] => BooleanBuffer::new_unset(raw.len()),
                    [first, ..] if by_place[..null].iter().all(|b| *b == first) => match first {
                        true => BooleanBuffer::new_set(raw.len()),
                        false => BooleanBuffer::new_unset(raw.len()),
                    },
                    _ => BooleanBuffer::collect_bool(raw.len(), |row| by_place.get((raw[row] as usize).min(null)).copied().unwrap_or(false)),
                };
                match valid {
                    None => bits,
                    Some(valid) if by_place[null] => &bits | &!valid.inner(),
                    Some(valid) => &bits & valid.inner(),
                }
            };
            let bits = spread(&|i| answers.value(i));
            let nulls = answers.nulls().filter(|n| n.null_count() > 0).map(|known| NullBuffer::new(spread(&|i| known.is_valid(i))));
            return Ok(ColumnarValue::Array(Arc::new(arrow::array::BooleanArray::new(bits, nulls))));
        }
        let places: Vec<u32> = match valid {
            Some(valid) => raw.iter().zip(valid.iter()).map(|(k, v)| if v { (*k as usize).min(null) as u32 } else { null as u32 }).collect(),
            None => raw.iter().map(|k| (*k as usize).min(null) as u32).collect(),
        };
        let positions = UInt32Array::from(places);
        Ok(ColumnarValue::Array(arrow::compute::take(answers.as_ref(), &positions, None)?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([inner]) => {
                let alone = super::plan_rules::over_its_column(&inner)?;
                let column = collect_columns(&inner)
                    .into_iter()
                    .next()
                    .ok_or_else(|| DataFusionError::Internal("evaluating over dictionary values an expression without a column".into()))?;
                let (returns, keep) = (Arc::clone(&self.returns), self.keep);
                Ok(Arc::new(OnValues { inner, column, alone, returns, kept: Mutex::default(), keep }))
            }
            Err(_) => Err(DataFusionError::Internal("evaluation over dictionary values takes one expression".into())),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

impl fmt::Debug for OnValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnValues").field("inner", &self.inner).field("column", &self.column).finish_non_exhaustive()
    }
}

impl fmt::Display for OnValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "on_values({})", self.inner)
    }
}

impl PartialEq for OnValues {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for OnValues {}

impl Hash for OnValues {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

/// Its input's batches with the columns read as dictionaries turned back into the types the
/// plan above expects. A [`PerBatchCountExec`] directly above (the one place the rule puts it)
/// reads the dictionaries instead, so `EXPLAIN ANALYZE` shows this node without metrics. Its
/// properties keep the input's partitioning only: nothing above it asks for an order.
#[derive(Debug)]
pub struct DictionaryCastExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl DictionaryCastExec {
    fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> DictionaryCastExec {
        let from = input.properties();
        let properties = PlanProperties::new(EquivalenceProperties::new(schema), from.output_partitioning().clone(), from.emission_type, from.boundedness);
        DictionaryCastExec { input, properties: Arc::new(properties) }
    }

    /// The node's input, whose batches hold the dictionaries.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

/// `batch` with its columns cast to `schema`'s types where they differ.
pub fn cast_back(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(Arc::clone(c)) } else { arrow::compute::cast(c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

impl DisplayAs for DictionaryCastExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let from = self.input.schema();
        let cast: Vec<&str> = from
            .fields()
            .iter()
            .zip(self.properties.eq_properties.schema().fields())
            .filter(|(a, b)| a.data_type() != b.data_type())
            .map(|(a, _)| a.name().as_str())
            .collect();
        write!(f, "DictionaryCastExec: [{}]", cast.join(", "))
    }
}

impl ExecutionPlan for DictionaryCastExec {
    fn name(&self) -> &str {
        "DictionaryCastExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, _options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|_| DataFusionError::Internal("DictionaryCastExec takes one input".into()))?;
        Ok(Arc::new(DictionaryCastExec::new(input, self.schema())))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let input = self.input.execute(partition, context)?;
        let cast = Arc::clone(&schema);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, input.map(move |b| b.and_then(|b| cast_back(b, &cast))))))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use arrow::array::{Int64Array, StringArray};
    use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// Two files of 5,000 rows in row groups of 2,500: few user agents and event names (some
    /// null), an address per row, an error code on one row in 40, and the row's number.
    fn write_files(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("useragent", DataType::Utf8, true),
            Field::new("eventname", DataType::Utf8, true),
            Field::new("sourceipaddress", DataType::Utf8, true),
            Field::new("errorcode", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let agents = [Some("aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64"), Some("python-requests/2.31"), None, Some("Boto3/1.34"), Some("")];
        for f in 0..2i64 {
            let rows = (f * 5_000)..((f + 1) * 5_000);
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter(rows.clone().map(|i| agents[(i * 7 % 5) as usize]))),
                    Arc::new(StringArray::from_iter(rows.clone().map(|i| (i % 11 != 0).then(|| ["GetObject", "ListBuckets", "AssumeRole"][(i % 3) as usize])))),
                    Arc::new(StringArray::from_iter_values(rows.clone().map(|i| format!("10.{}.{}.{}", i % 3, i / 256, i % 256)))),
                    Arc::new(StringArray::from_iter(rows.clone().map(|i| (i % 40 == 3).then_some("AccessDenied")))),
                    Arc::new(Int64Array::from_iter_values(rows)),
                ],
            )
            .unwrap();
            let props = WriterProperties::builder().set_max_row_group_row_count(Some(2_500)).build();
            let mut writer = ArrowWriter::try_new(std::fs::File::create(dir.join(format!("f{f}.parquet"))).unwrap(), Arc::clone(&schema), Some(props)).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }

    /// The plan and the answer of `sql`, with or without the rule (after
    /// [`super::super::page_count::CountPages`], as in a session). The table's scan is given
    /// the lake's reader factory and store URL, which the rules build on (a lake table's scan
    /// has them). Three partitions over two files: each file is read in two byte ranges.
    async fn run(dir: &std::path::Path, sql: &str, rule: bool) -> (String, String) {
        let rules: Vec<Arc<dyn PhysicalOptimizerRule>> = match rule {
            true => vec![Arc::new(super::super::page_count::CountPages), Arc::new(ReadDictionaries)],
            false => Vec::new(),
        };
        run_with(dir, sql, &rules).await
    }

    /// [`run`] with `rules`, in order, on the plan over the lake-style scans.
    pub(in crate::sql) async fn run_with(dir: &std::path::Path, sql: &str, rules: &[Arc<dyn PhysicalOptimizerRule>]) -> (String, String) {
        let builder = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(3).with_batch_size(1_250).with_repartition_file_min_size(1))
            .with_physical_optimizer_rule(Arc::new(super::super::per_value::EvaluatePerValue))
            .with_physical_optimizer_rule(Arc::new(super::super::per_batch::CountPerBatch));
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_parquet("t", dir.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        // A lake table's scan names its store by a `prism-table` URL.
        let lake_url = datafusion::execution::object_store::ObjectStoreUrl::parse(format!("{}://test/", super::super::scan::TABLE_STORE_SCHEME)).unwrap();
        ctx.register_object_store(lake_url.as_ref(), Arc::clone(&store));
        let plan = plan
            .transform_up(|node| {
                let Some(config) = super::super::plan_rules::file_scan(&node) else { return Ok(Transformed::no(node)) };
                let Some(source) = config.file_source().downcast_ref::<ParquetSource>() else { return Ok(Transformed::no(node)) };
                let lake = NestedViews::new(Arc::new(DefaultParquetFileReaderFactory::new(Arc::clone(&store))), Vec::new());
                let source = source.clone().with_parquet_file_reader_factory(Arc::new(lake));
                let mut config = config.clone();
                config.object_store_url = lake_url.clone();
                let scan = DataSourceExec::from_data_source(FileScanConfigBuilder::from(config).with_source(Arc::new(source)).build());
                Ok(Transformed::yes(scan as Arc<dyn ExecutionPlan>))
            })
            .data()
            .unwrap();
        let options = ctx.state().config_options().clone();
        let plan = rules.iter().fold(plan, |plan, rule| rule.optimize(plan, &options).unwrap());
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true).to_string();
        (shown, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn filters_and_counts_read_dictionaries_with_the_same_answers() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        // (query, what its plan shows with the rule)
        let cases = [
            // Counted from the pages, with nulls and an empty string among the values.
            ("SELECT useragent, count(*), count(useragent) FROM t GROUP BY 1 ORDER BY 1", "PageCountExec: useragent, 2 files"),
            ("SELECT count(DISTINCT eventname) FROM t", "PageCountExec: eventname"),
            ("SELECT useragent, count(*) FROM t WHERE v > 10 GROUP BY 1 ORDER BY 1", "DictionaryCastExec: [useragent]"),
            ("SELECT count(*) FROM t WHERE useragent LIKE '%python%' OR sourceipaddress LIKE '10.1.%'", "on_values(sourceipaddress"),
            ("SELECT count(*), sum(v) FROM t WHERE useragent LIKE 'aws-cli/2.%'", "on_values("),
            ("SELECT count(*) FROM t WHERE useragent IS NULL", "on_values("),
            ("SELECT count(*) FROM t WHERE NOT (useragent LIKE '%o%')", "on_values("),
            ("SELECT count(*) FROM t WHERE coalesce(useragent, 'none') = 'none'", "on_values("),
            ("SELECT count(*) FROM t WHERE useragent = ''", "on_values("),
            (
                "SELECT eventname, count(*), count(eventname) FROM t WHERE errorcode IS NULL AND useragent <> 'x' GROUP BY 1 ORDER BY 1",
                "DictionaryCastExec: [eventname]",
            ),
            // A count of another column, over keys nearly all distinct: the partition goes to
            // DataFusion's aggregate, the addresses turned back into views.
            ("SELECT count(*), sum(n) FROM (SELECT sourceipaddress, count(v) AS n FROM t GROUP BY 1)", "DictionaryCastExec: [sourceipaddress]"),
            // The same by the pages (`count(*)`).
            ("SELECT count(*), sum(n) FROM (SELECT sourceipaddress, count(*) AS n FROM t GROUP BY 1)", "PageCountExec: sourceipaddress"),
        ];
        for (sql, shown) in cases {
            let (plain, answer) = run(dir.path(), sql, false).await;
            assert!(!plain.contains("on_values") && !plain.contains("DictionaryCastExec") && !plain.contains("PageCountExec"), "{sql}: {plain}");
            assert!(plain.contains(".parquet:"), "files read in ranges: {plain}");
            let (plan, same) = run(dir.path(), sql, true).await;
            assert_eq!(answer, same, "{sql}: {plan}");
            assert!(plan.contains(shown), "{sql}: {plan}");
            // (Which partitions read the two files depends on work stealing: one, or both.)
            let handed_over = plan.contains("PerBatchCountExec") && !plan.contains("PageCountExec") && !plan.contains("partitions_handed_over=0");
            assert_eq!(handed_over, sql.contains("SELECT sourceipaddress, count(v)"), "{sql}: {plan}");
        }
        // The scan's own predicate still prunes row groups by the other columns' statistics
        // (and by the chosen one's, through a cast): one row group of four is read.
        let pruned = "SELECT count(*) FROM t WHERE useragent = 'Boto3/1.34' AND v >= 7500";
        let (plan, same) = run(dir.path(), pruned, true).await;
        assert_eq!(same, run(dir.path(), pruned, false).await.1);
        let scan = plan.lines().find(|l| l.contains("DataSourceExec")).unwrap_or_default();
        assert!(plan.contains("on_values(") && scan.contains("output_rows=2.50 K"), "{plan}");
        // Read another way too (passed on, compared with another column), or not few-valued:
        // left as views.
        for sql in [
            "SELECT useragent, v FROM t WHERE useragent LIKE '%python%' ORDER BY v LIMIT 3",
            "SELECT count(*) FROM t WHERE useragent = eventname",
            "SELECT count(*) FROM t WHERE CAST(v AS VARCHAR) LIKE '1%'",
        ] {
            let (_, answer) = run(dir.path(), sql, false).await;
            let (plan, same) = run(dir.path(), sql, true).await;
            assert_eq!(answer, same, "{sql}: {plan}");
            assert!(!plan.contains("on_values") && !plan.contains("DictionaryCastExec"), "{sql}: {plan}");
        }
    }
}
