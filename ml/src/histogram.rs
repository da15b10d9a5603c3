//! One pass of level-wise training as a DataFusion aggregate: `ml_tree_histogram(spec, label,
//! [weight,] bin_0, ..., bin_n)`. The spec literal carries the current tree (splits over bins) and
//! which nodes are open in this pass; each partition routes its rows down the tree and adds them
//! to a flat `node × feature × bin × class` histogram of integer counts (and fixed-point weight
//! sums when there is a weight column). Partial histograms merge by integer addition, so the
//! result does not depend on how rows are partitioned or in which order partial states merge.
//! Everything a pass needs is inside the plan (the literal), never in process-local state, so
//! the function can be created by name on any executor. The same routing serves the
//! `ml_tree_score` UDF, which scores binned rows with a finished tree. This module does not
//! choose splits.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt8Type, UInt16Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::AggregateFunctionParams;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::{Expr, lit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name `ml_tree_histogram` is registered under.
pub const HISTOGRAM_UDAF: &str = "ml_tree_histogram";

/// The name `ml_tree_score` is registered under.
pub const SCORE_UDF: &str = "ml_tree_score";

/// Row weights are summed as fixed-point integers with this many units per 1.0, so sums are
/// exact and associative.
pub(crate) const WEIGHT_SCALE: f64 = 16_777_216.0;

/// The largest row weight accepted (so that sums of a billion rows cannot overflow `u64`).
pub(crate) const MAX_ROW_WEIGHT: f64 = 1.0e6;

/// How a split sends a row: by the bin of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum BinRule {
    /// Value bins `1..=bin` go left; the missing bin goes left iff `missing_left`.
    Upto {
        /// The last value bin on the left.
        bin: u16,
        /// Where the missing bin goes.
        missing_left: bool,
    },
    /// The listed bins go left, all others right.
    Set {
        /// Bins on the left, ascending.
        bins: Vec<u16>,
    },
}

impl BinRule {
    /// Whether a row in `bin` goes left.
    pub(crate) fn goes_left(&self, bin: u16) -> bool {
        match self {
            BinRule::Upto {
                bin: last,
                missing_left,
            } => {
                if bin == crate::binning::MISSING_BIN {
                    *missing_left
                } else {
                    bin <= *last
                }
            }
            BinRule::Set { bins } => bins.binary_search(&bin).is_ok(),
        }
    }
}

/// One node of the tree as a pass sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum RouteNode {
    /// An internal node: children are indices into [`PassSpec::nodes`].
    Split {
        /// Feature index.
        feature: u32,
        /// How rows go.
        rule: BinRule,
        /// Left child.
        left: u32,
        /// Right child.
        right: u32,
    },
    /// A node whose histogram this pass accumulates, in block `slot`.
    Open {
        /// Histogram block.
        slot: u32,
    },
    /// A node this pass ignores; `score` is its probability of class 1 (for `ml_tree_score`).
    Leaf {
        /// Probability of class 1.
        #[serde(with = "crate::exact")]
        score: f64,
    },
}

/// Everything one pass needs, shipped inside the plan as a JSON literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PassSpec {
    /// Bins per feature (the missing bin included).
    pub(crate) bins: Vec<u32>,
    /// Whether a weight column follows the label.
    pub(crate) weighted: bool,
    /// The tree; node 0 is the root.
    pub(crate) nodes: Vec<RouteNode>,
    /// Number of open nodes (histogram blocks).
    pub(crate) slots: u32,
}

/// Where a node's, a feature's and a bin's counters live in the flat histogram.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Start of each feature's bins within a node block, in cells.
    pub(crate) offsets: Vec<usize>,
    /// Bins per feature.
    pub(crate) bins: Vec<usize>,
    /// Counters per cell: counts of class 0 and 1, then (weighted) fixed-point weights of both.
    pub(crate) stats: usize,
    /// Counters per node block.
    pub(crate) node_stride: usize,
}

impl Layout {
    pub(crate) fn new(bins: &[u32], weighted: bool) -> Self {
        let mut offsets = Vec::with_capacity(bins.len());
        let mut cells = 0usize;
        for b in bins {
            offsets.push(cells);
            cells += *b as usize;
        }
        let stats = if weighted { 4 } else { 2 };
        Layout {
            offsets,
            bins: bins.iter().map(|b| *b as usize).collect(),
            stats,
            node_stride: cells * stats,
        }
    }

    /// Bytes of histogram per open node.
    pub(crate) fn bytes_per_node(&self) -> usize {
        self.node_stride * 8
    }
}

/// The tree of a spec, ready to route rows.
#[derive(Debug)]
struct Router {
    spec: PassSpec,
    layout: Layout,
}

impl Router {
    fn decode(function: &'static str, json: &str) -> Result<Self> {
        let spec: PassSpec = serde_json::from_str(json).map_err(|e| Error::FunctionArgument {
            function,
            reason: format!("cannot decode the pass spec: {e}"),
        })?;
        for node in &spec.nodes {
            let ok = match node {
                RouteNode::Split {
                    feature,
                    left,
                    right,
                    ..
                } => {
                    (*feature as usize) < spec.bins.len()
                        && (*left as usize) < spec.nodes.len()
                        && (*right as usize) < spec.nodes.len()
                }
                RouteNode::Open { slot } => *slot < spec.slots,
                RouteNode::Leaf { .. } => true,
            };
            if !ok {
                return Err(Error::FunctionArgument {
                    function,
                    reason: "the pass spec refers to a node, feature or slot it does not have"
                        .to_string(),
                });
            }
        }
        let layout = Layout::new(&spec.bins, spec.weighted);
        Ok(Router { spec, layout })
    }

    /// The node a row ends in.
    #[inline]
    fn route(&self, bins: &[&[u16]], row: usize) -> &RouteNode {
        let mut node = &self.spec.nodes[0];
        // A tree is at most 30 levels deep; the bound also guards against a cyclic spec.
        for _ in 0..=self.spec.nodes.len() {
            match node {
                RouteNode::Split {
                    feature,
                    rule,
                    left,
                    right,
                } => {
                    let bin = bins[*feature as usize][row];
                    let next = if rule.goes_left(bin) { left } else { right };
                    node = &self.spec.nodes[*next as usize];
                }
                _ => return node,
            }
        }
        node
    }
}

/// Reads the literal spec argument of a call.
fn spec_literal(function: &'static str, value: Option<&ScalarValue>) -> Result<String> {
    match value {
        Some(ScalarValue::Dictionary(_, inner)) => spec_literal(function, Some(inner)),
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s.clone()),
        _ => Err(Error::FunctionArgument {
            function,
            reason: "the first argument must be the pass spec as a Utf8 literal".to_string(),
        }),
    }
}

/// Borrows bin columns as `u16` slices (casting if a plan widened them).
fn bin_columns(arrays: &[ArrayRef]) -> DfResult<Vec<ArrayRef>> {
    arrays
        .iter()
        .map(|a| {
            if a.data_type() == &DataType::UInt16 {
                Ok(Arc::clone(a))
            } else {
                Ok(cast(a, &DataType::UInt16)?)
            }
        })
        .collect()
}

/// The histogram aggregate. See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TreeHistogramUdaf {
    signature: Signature,
}

impl Default for TreeHistogramUdaf {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl TreeHistogramUdaf {
    /// The UDAF, ready to register.
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self::default())
    }
}

/// A short, stable name for a call (the spec literal can be large).
fn short_name(name: &str, args: &[Expr]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(Expr::Literal(value, _)) = args.first() {
        value.to_string().hash(&mut hasher);
    }
    format!(
        "{name}({:016x}, {} columns)",
        hasher.finish(),
        args.len().saturating_sub(1)
    )
}

impl AggregateUDFImpl for TreeHistogramUdaf {
    fn name(&self) -> &str {
        HISTOGRAM_UDAF
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> DfResult<String> {
        Ok(short_name(HISTOGRAM_UDAF, &params.args))
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> DfResult<String> {
        Ok(short_name(HISTOGRAM_UDAF, &params.args))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        let literal = acc_args
            .exprs
            .first()
            .and_then(|e| e.downcast_ref::<Literal>())
            .map(|l| l.value());
        let json = spec_literal(HISTOGRAM_UDAF, literal).map_err(Error::into_datafusion)?;
        let router = Router::decode(HISTOGRAM_UDAF, &json).map_err(Error::into_datafusion)?;
        let expected = 2 + usize::from(router.spec.weighted) + router.spec.bins.len();
        if acc_args.exprs.len() != expected {
            return Err(Error::FunctionArgument {
                function: HISTOGRAM_UDAF,
                reason: format!(
                    "expected {expected} arguments, got {}",
                    acc_args.exprs.len()
                ),
            }
            .into_datafusion());
        }
        let cells = router.layout.node_stride * router.spec.slots as usize;
        Ok(Box::new(HistogramAccumulator {
            router: Arc::new(router),
            hist: vec![0; cells],
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[hist]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

/// Per-partition state of `ml_tree_histogram`.
#[derive(Debug)]
struct HistogramAccumulator {
    router: Arc<Router>,
    hist: Vec<u64>,
}

impl HistogramAccumulator {
    fn to_scalar(&self) -> ScalarValue {
        let mut bytes = Vec::with_capacity(self.hist.len() * 8);
        for v in &self.hist {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ScalarValue::Binary(Some(bytes))
    }

    fn add_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() != self.hist.len() * 8 {
            return Err(Error::FunctionArgument {
                function: HISTOGRAM_UDAF,
                reason: format!(
                    "a partial histogram has {} bytes, expected {}",
                    bytes.len(),
                    self.hist.len() * 8
                ),
            });
        }
        for (cell, chunk) in self.hist.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            *cell = cell.wrapping_add(u64::from_le_bytes(w));
        }
        Ok(())
    }
}

impl Accumulator for HistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let router = Arc::clone(&self.router);
        let spec = &router.spec;
        let layout = &router.layout;
        let rows = values.first().map_or(0, |a| a.len());
        let label = cast(&values[1], &DataType::UInt8)?;
        let label = label.as_primitive::<UInt8Type>();
        let mut next = 2;
        let weights: Option<Float64Array> = if spec.weighted {
            next += 1;
            Some(
                cast(&values[2], &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            )
        } else {
            None
        };
        let columns = bin_columns(&values[next..])?;
        let bins: Vec<&[u16]> = columns
            .iter()
            .map(|c| c.as_primitive::<UInt16Type>().values().as_ref())
            .collect();
        let labels = label.values();
        for row in 0..rows {
            let slot = match router.route(&bins, row) {
                RouteNode::Open { slot } => *slot as usize,
                _ => continue,
            };
            let class = usize::from(labels[row] != 0);
            let block = &mut self.hist[slot * layout.node_stride..(slot + 1) * layout.node_stride];
            match &weights {
                None => {
                    for (f, column) in bins.iter().enumerate() {
                        let cell = layout.offsets[f] + column[row] as usize;
                        block[cell * 2 + class] += 1;
                    }
                }
                Some(w) => {
                    let fixed = (w.value(row) * WEIGHT_SCALE).round() as u64;
                    for (f, column) in bins.iter().enumerate() {
                        let cell = (layout.offsets[f] + column[row] as usize) * 4;
                        block[cell + class] += 1;
                        block[cell + 2 + class] = block[cell + 2 + class].wrapping_add(fixed);
                    }
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(self.to_scalar())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.hist.capacity() * 8
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.to_scalar()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(states) = states.first() else {
            return Ok(());
        };
        let states: &BinaryArray = states.as_binary::<i32>();
        for i in 0..states.len() {
            if states.is_valid(i) {
                self.add_bytes(states.value(i))
                    .map_err(Error::into_datafusion)?;
            }
        }
        Ok(())
    }
}

/// `ml_tree_score(spec, bin_0, ..., bin_n) -> Float64`: the probability of class 1 at the leaf a
/// binned row reaches.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TreeScoreUdf {
    signature: Signature,
}

impl Default for TreeScoreUdf {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl TreeScoreUdf {
    /// The UDF, ready to register.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::default())
    }
}

impl ScalarUDFImpl for TreeScoreUdf {
    fn name(&self) -> &str {
        SCORE_UDF
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        Ok(short_name(SCORE_UDF, args))
    }

    fn display_name(&self, args: &[Expr]) -> DfResult<String> {
        Ok(short_name(SCORE_UDF, args))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let mut values = args.args.into_iter();
        let literal = match values.next() {
            Some(ColumnarValue::Scalar(s)) => Some(s),
            _ => None,
        };
        let json = spec_literal(SCORE_UDF, literal.as_ref()).map_err(Error::into_datafusion)?;
        let router = Router::decode(SCORE_UDF, &json).map_err(Error::into_datafusion)?;
        let arrays = values
            .map(|v| v.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        if arrays.len() != router.spec.bins.len() {
            return Err(Error::FunctionArgument {
                function: SCORE_UDF,
                reason: format!(
                    "expected {} bin columns, got {}",
                    router.spec.bins.len(),
                    arrays.len()
                ),
            }
            .into_datafusion());
        }
        let columns = bin_columns(&arrays)?;
        let bins: Vec<&[u16]> = columns
            .iter()
            .map(|c| c.as_primitive::<UInt16Type>().values().as_ref())
            .collect();
        let scores: Float64Array = (0..rows)
            .map(|row| match router.route(&bins, row) {
                RouteNode::Leaf { score } => Some(*score),
                _ => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}

/// `ml_tree_histogram(spec, label, [weight,] bins...)` as an expression.
pub(crate) fn histogram_expr(
    spec: &PassSpec,
    label: Expr,
    weight: Option<Expr>,
    bins: Vec<Expr>,
) -> Result<Expr> {
    // Dictionary-encoded, so that evaluating the literal for a batch of rows repeats a key, not
    // the spec's text.
    let spec = ScalarValue::Dictionary(
        Box::new(DataType::Int32),
        Box::new(ScalarValue::Utf8(Some(serde_json::to_string(spec)?))),
    );
    let mut args = vec![lit(spec), label];
    args.extend(weight);
    args.extend(bins);
    Ok(TreeHistogramUdaf::udaf().call(args))
}

/// `ml_tree_score(spec, bins...)` as an expression.
pub(crate) fn score_expr(spec: &PassSpec, bins: Vec<Expr>) -> Result<Expr> {
    let mut args = vec![lit(serde_json::to_string(spec)?)];
    args.extend(bins);
    Ok(TreeScoreUdf::udf().call(args))
}

/// Decodes the aggregate's result into counters.
pub(crate) fn decode_histogram(bytes: &[u8], expected_cells: usize) -> Result<Vec<u64>> {
    if bytes.len() != expected_cells * 8 {
        return Err(Error::FunctionArgument {
            function: HISTOGRAM_UDAF,
            reason: format!(
                "the histogram has {} bytes, expected {}",
                bytes.len(),
                expected_cells * 8
            ),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{StringArray, UInt8Array, UInt16Array};

    use super::*;

    fn spec() -> PassSpec {
        // Root splits feature 0 at bin 1; the left child is open, the right one is a leaf.
        PassSpec {
            bins: vec![3, 2],
            weighted: false,
            nodes: vec![
                RouteNode::Split {
                    feature: 0,
                    rule: BinRule::Upto {
                        bin: 1,
                        missing_left: false,
                    },
                    left: 1,
                    right: 2,
                },
                RouteNode::Open { slot: 0 },
                RouteNode::Leaf { score: 0.25 },
            ],
            slots: 1,
        }
    }

    fn accumulator(spec: &PassSpec) -> HistogramAccumulator {
        let router = Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(spec).unwrap()).unwrap();
        let cells = router.layout.node_stride * spec.slots as usize;
        HistogramAccumulator {
            router: Arc::new(router),
            hist: vec![0; cells],
        }
    }

    fn batch(labels: Vec<u8>, f0: Vec<u16>, f1: Vec<u16>) -> Vec<ArrayRef> {
        let n = labels.len();
        vec![
            Arc::new(StringArray::from(vec!["spec"; n])),
            Arc::new(UInt8Array::from(labels)),
            Arc::new(UInt16Array::from(f0)),
            Arc::new(UInt16Array::from(f1)),
        ]
    }

    #[test]
    fn counts_only_rows_of_open_nodes() {
        let mut acc = accumulator(&spec());
        // Rows with f0 bin 1 go left (open); bin 2 goes right (leaf); missing goes right.
        acc.update_batch(&batch(vec![1, 0, 1, 1], vec![1, 1, 2, 0], vec![1, 0, 1, 1]))
            .unwrap();
        // Layout: feature 0 cells 0..3, feature 1 cells 3..5; two classes per cell.
        assert_eq!(acc.hist, vec![0, 0, 1, 1, 0, 0, 1, 0, 0, 1]);
    }

    #[test]
    fn partial_states_merge_in_any_order_to_the_same_histogram() {
        let s = spec();
        let parts = [
            batch(vec![1, 0], vec![1, 1], vec![1, 0]),
            batch(vec![0, 0, 1], vec![1, 0, 1], vec![1, 1, 1]),
            batch(vec![1], vec![2], vec![0]),
        ];
        let mut states = Vec::new();
        for p in &parts {
            let mut acc = accumulator(&s);
            acc.update_batch(p).unwrap();
            states.push(acc.state().unwrap().remove(0));
        }
        let merged = |order: &[usize]| {
            let mut acc = accumulator(&s);
            for i in order {
                let array = states[*i].to_array().unwrap();
                acc.merge_batch(&[array]).unwrap();
            }
            acc.hist.clone()
        };
        assert_eq!(merged(&[0, 1, 2]), merged(&[2, 0, 1]));
        let mut single = accumulator(&s);
        for p in &parts {
            single.update_batch(p).unwrap();
        }
        assert_eq!(merged(&[1, 2, 0]), single.hist);
    }

    #[test]
    fn a_bad_spec_is_a_named_error() {
        let err = Router::decode(HISTOGRAM_UDAF, "{not json").unwrap_err();
        assert!(err.to_string().contains("ml_tree_histogram"), "{err}");
        let mut bad = spec();
        bad.nodes[0] = RouteNode::Split {
            feature: 9,
            rule: BinRule::Set { bins: vec![1] },
            left: 1,
            right: 2,
        };
        assert!(Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(&bad).unwrap()).is_err());
    }
}
