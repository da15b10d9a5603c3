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
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, FieldRef, Float64Type, UInt8Type, UInt16Type,
};
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
    /// Whether a Boolean column follows the label (and the weight): rows where it is not true
    /// are skipped. The row set of a pass is chosen this way rather than by a filter before
    /// the aggregate, which would copy every column of the rows it keeps.
    #[serde(default)]
    pub(crate) filtered: bool,
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

/// A row's node before the routing of a batch: the root.
const ROOT: u32 = 0;

/// The slot of a node this pass does not accumulate.
const NO_SLOT: u32 = u32::MAX;

/// How a row leaves a node, packed so that one step reads one small record.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The feature the node splits on (feature 0 for nodes that do not split).
    feature: u32,
    /// Where the node's table starts in [`Router::right`].
    table: u32,
    /// Left and right child.
    children: [u32; 2],
}

/// The tree of a spec compiled for routing whole batches. Every node has two children and a
/// "goes right" table over the bins of its feature; a node that does not split is its own
/// child on both sides, so routing is the same step repeated `depth` times for every row, with
/// no branch on the kind of node and no per-row loop over the path (rows are independent, so
/// the steps of many rows overlap in the CPU).
#[derive(Debug)]
struct Router {
    spec: PassSpec,
    layout: Layout,
    /// Per node: how a row leaves it.
    steps: Vec<Step>,
    /// Per split node, one entry per bin of its feature: 1 when the bin goes right. Nodes that
    /// do not split share the all-zero table at offset 0.
    right: Vec<u8>,
    /// Per node: its histogram slot, or [`NO_SLOT`].
    slot: Vec<u32>,
    /// Per feature: where its counters start in a node's block.
    cell_offsets: Vec<usize>,
    /// Per node: its probability of class 1 (leaves only; `None` elsewhere).
    score: Vec<Option<f64>>,
    /// Splits on the longest path from the root.
    depth: usize,
}

impl Router {
    fn decode(function: &'static str, json: &str) -> Result<Self> {
        let spec: PassSpec = serde_json::from_str(json).map_err(|e| Error::FunctionArgument {
            function,
            reason: format!("cannot decode the pass spec: {e}"),
        })?;
        let bad = |reason: &str| Error::FunctionArgument {
            function,
            reason: reason.to_string(),
        };
        if spec.nodes.is_empty() || spec.bins.is_empty() || spec.bins.contains(&0) {
            return Err(bad(
                "the pass spec has no nodes, no features or a feature without bins",
            ));
        }
        if spec.nodes.len() >= NO_SLOT as usize {
            return Err(bad("the pass spec has too many nodes"));
        }
        let n = spec.nodes.len();
        // One more node than the spec has: [`Router::skip`], where rows outside the pass's row
        // set stay.
        let mut steps = Vec::with_capacity(n + 1);
        let mut right = vec![0u8; spec.bins[0] as usize];
        let mut slot = vec![NO_SLOT; n + 1];
        let mut score = vec![None; n + 1];
        for (i, node) in spec.nodes.iter().enumerate() {
            let me = i as u32;
            let stay = Step {
                feature: 0,
                table: 0,
                children: [me, me],
            };
            match node {
                RouteNode::Split {
                    feature: f,
                    rule,
                    left,
                    right: r,
                } => {
                    let Some(&bins) = spec.bins.get(*f as usize) else {
                        return Err(bad("the pass spec splits on a feature it does not have"));
                    };
                    if (*left as usize) >= n || (*r as usize) >= n {
                        return Err(bad("the pass spec refers to a node it does not have"));
                    }
                    steps.push(Step {
                        feature: *f,
                        table: u32::try_from(right.len())
                            .map_err(|_| bad("the pass spec's split tables are too large"))?,
                        children: [*left, *r],
                    });
                    right.extend(
                        (0..bins).map(|b| {
                            u8::from(!rule.goes_left(u16::try_from(b).unwrap_or(u16::MAX)))
                        }),
                    );
                }
                RouteNode::Open { slot: s } => {
                    if *s >= spec.slots {
                        return Err(bad("the pass spec refers to a slot it does not have"));
                    }
                    steps.push(stay);
                    slot[i] = *s;
                }
                RouteNode::Leaf { score: p } => {
                    steps.push(stay);
                    score[i] = Some(*p);
                }
            }
        }
        steps.push(Step {
            feature: 0,
            table: 0,
            children: [n as u32, n as u32],
        });
        // The longest path, walking down from the root; a node reached twice means the spec is
        // not a tree (and routing could cycle).
        let mut seen = vec![false; n];
        let mut level = vec![ROOT];
        let mut depth = 0usize;
        seen[0] = true;
        loop {
            let mut next = Vec::new();
            for &i in &level {
                if matches!(spec.nodes[i as usize], RouteNode::Split { .. }) {
                    for c in steps[i as usize].children {
                        if std::mem::replace(&mut seen[c as usize], true) {
                            return Err(bad("the pass spec's nodes do not form a tree"));
                        }
                        next.push(c);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            depth += 1;
            level = next;
        }
        let layout = Layout::new(&spec.bins, spec.weighted);
        let cell_offsets = layout.offsets.iter().map(|o| o * layout.stats).collect();
        Ok(Router {
            spec,
            layout,
            steps,
            right,
            slot,
            cell_offsets,
            score,
            depth,
        })
    }

    /// Checks that every bin is within its feature's range, so routing and accumulating can
    /// index without further checks failing.
    fn check_bins<B: Bin>(&self, function: &'static str, bins: &[&[B]]) -> Result<()> {
        for (f, (column, &count)) in bins.iter().zip(&self.spec.bins).enumerate() {
            if B::any_past(column, count as usize - 1) {
                let top = column.iter().map(|b| (*b).into()).max().unwrap_or(0);
                return Err(Error::FunctionArgument {
                    function,
                    reason: format!(
                        "bin {top} of feature {f} is outside its {count} bins (binned with other edges?)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The node that holds the rows a pass skips.
    fn skip(&self) -> u32 {
        self.spec.nodes.len() as u32
    }

    /// The node each row of a batch ends in, into `nodes`; rows that `include` does not mark
    /// true end in [`Router::skip`].
    fn route_batch<B: Bin>(
        &self,
        bins: &[&[B]],
        include: Option<&BooleanArray>,
        rows: usize,
        nodes: &mut Vec<u32>,
    ) {
        nodes.clear();
        match include {
            None => nodes.resize(rows, ROOT),
            Some(include) => {
                nodes.resize(rows, self.skip());
                for row in include.values().set_indices() {
                    nodes[row] = ROOT;
                }
                if let Some(nulls) = include.nulls() {
                    for (node, valid) in nodes.iter_mut().zip(nulls.iter()) {
                        if !valid {
                            *node = self.skip();
                        }
                    }
                }
            }
        }
        for _ in 0..self.depth {
            for (row, node) in nodes.iter_mut().enumerate() {
                let step = &self.steps[*node as usize];
                let bin: usize = bins[step.feature as usize][row].into();
                *node = step.children[usize::from(self.right[step.table as usize + bin])];
            }
        }
    }
}

/// Reads the literal spec argument of a call.
fn spec_literal<'a>(function: &'static str, value: Option<&'a ScalarValue>) -> Result<&'a str> {
    match value {
        Some(ScalarValue::Dictionary(_, inner)) => spec_literal(function, Some(inner)),
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s),
        _ => Err(Error::FunctionArgument {
            function,
            reason: "the first argument must be the pass spec as a Utf8 literal".to_string(),
        }),
    }
}

/// The last spec a function decoded, so that the partitions and batches of one pass decode it
/// once. It caches a pure function of the literal and never changes a result; functions
/// compare equal whatever it holds.
#[derive(Debug, Default)]
struct LastSpec(Mutex<Option<(String, Arc<Router>)>>);

impl LastSpec {
    fn router(&self, function: &'static str, json: &str) -> Result<Arc<Router>> {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached, router)) = last.as_ref()
            && cached == json
        {
            return Ok(Arc::clone(router));
        }
        let router = Arc::new(Router::decode(function, json)?);
        *last = Some((json.to_string(), Arc::clone(&router)));
        Ok(router)
    }
}

impl PartialEq for LastSpec {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LastSpec {}

impl Hash for LastSpec {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// A bin index as a column stores it: `u8` when every feature has at most 256 bins (the binned
/// table stores them so, which halves what every pass reads), `u16` otherwise.
pub(crate) trait Bin: Copy + Into<usize> {
    /// Whether some bin of `column` is past `last`.
    fn any_past(column: &[Self], last: usize) -> bool;
}

macro_rules! impl_bin {
    ($t:ty) => {
        impl Bin for $t {
            fn any_past(column: &[Self], last: usize) -> bool {
                let Ok(last) = <$t>::try_from(last) else {
                    return false;
                };
                // Saturating subtraction and OR run on whole vectors of bins (an unsigned
                // maximum does not on baseline x86-64); the result is non-zero iff some bin is
                // past `last`.
                let mut lanes = [0 as $t; 32];
                let chunks = column.chunks_exact(32);
                let tail = chunks
                    .remainder()
                    .iter()
                    .fold(0, |acc, &b| acc | b.saturating_sub(last));
                for chunk in chunks {
                    for (lane, &b) in lanes.iter_mut().zip(chunk) {
                        *lane |= b.saturating_sub(last);
                    }
                }
                lanes.iter().fold(tail, |acc, &l| acc | l) != 0
            }
        }
    };
}

impl_bin!(u8);
impl_bin!(u16);

/// The bin columns of a batch, all of one width (others are cast to `u16`).
enum BinColumns {
    Narrow(Vec<ArrayRef>),
    Wide(Vec<ArrayRef>),
}

impl BinColumns {
    fn new(arrays: &[ArrayRef]) -> DfResult<Self> {
        if arrays.iter().all(|a| a.data_type() == &DataType::UInt8) {
            return Ok(BinColumns::Narrow(arrays.to_vec()));
        }
        let wide = arrays
            .iter()
            .map(|a| {
                if a.data_type() == &DataType::UInt16 {
                    Ok(Arc::clone(a))
                } else {
                    Ok(cast(a, &DataType::UInt16)?)
                }
            })
            .collect::<DfResult<_>>()?;
        Ok(BinColumns::Wide(wide))
    }
}

/// The value slices of bin columns already of type `T`.
fn value_slices<T: ArrowPrimitiveType>(columns: &[ArrayRef]) -> Vec<&[T::Native]> {
    columns
        .iter()
        .map(|c| c.as_primitive::<T>().values().as_ref())
        .collect()
}

/// The histogram aggregate. See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TreeHistogramUdaf {
    signature: Signature,
    last: LastSpec,
}

impl Default for TreeHistogramUdaf {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
            last: LastSpec::default(),
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
        let router = self
            .last
            .router(HISTOGRAM_UDAF, json)
            .map_err(Error::into_datafusion)?;
        let expected = 2
            + usize::from(router.spec.weighted)
            + usize::from(router.spec.filtered)
            + router.spec.bins.len();
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
            router,
            hist: vec![0; cells],
            scratch: Scratch::default(),
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
    scratch: Scratch,
}

/// Buffers reused from batch to batch.
#[derive(Debug, Default)]
struct Scratch {
    /// The node of each row.
    nodes: Vec<u32>,
    /// Rows of open nodes.
    rows: Vec<u32>,
    /// Per row of `rows`: the index of its class's counter of bin 0 of feature 0.
    base: Vec<usize>,
    /// Per row of `rows`: its fixed-point weight (weighted passes only).
    fixed: Vec<u64>,
}

impl HistogramAccumulator {
    fn to_scalar(&self) -> ScalarValue {
        let mut bytes = Vec::with_capacity(self.hist.len() * 8);
        for v in &self.hist {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ScalarValue::Binary(Some(bytes))
    }

    /// Routes a batch and adds the rows of open nodes to their histograms.
    fn accumulate<B: Bin>(
        &mut self,
        router: &Router,
        bins: &[&[B]],
        labels: &[u8],
        weights: Option<&Float64Array>,
        include: Option<&BooleanArray>,
        rows: usize,
    ) -> Result<()> {
        router.check_bins(HISTOGRAM_UDAF, bins)?;
        let scratch = &mut self.scratch;
        router.route_batch(bins, include, rows, &mut scratch.nodes);
        // The rows of open nodes, each with where its class's counters start in its node's
        // block; then one tight loop per feature over just those rows. (Grouping the rows by
        // node first, for cache locality, measured slower: a block is small enough.)
        let stride = router.layout.node_stride;
        scratch.rows.clear();
        scratch.base.clear();
        for (row, &node) in scratch.nodes.iter().enumerate() {
            let slot = router.slot[node as usize];
            if slot != NO_SLOT {
                scratch.rows.push(row as u32);
                scratch
                    .base
                    .push(slot as usize * stride + usize::from(labels[row] != 0));
            }
        }
        let hist = &mut self.hist;
        match weights {
            None => {
                for (&offset, column) in router.cell_offsets.iter().zip(bins) {
                    for (&row, &base) in scratch.rows.iter().zip(&scratch.base) {
                        let bin: usize = column[row as usize].into();
                        let cell = base + offset + bin * 2;
                        hist[cell] = hist[cell].wrapping_add(1);
                    }
                }
            }
            Some(w) => {
                scratch.fixed.clear();
                scratch.fixed.extend(
                    scratch
                        .rows
                        .iter()
                        .map(|&row| (w.value(row as usize) * WEIGHT_SCALE).round() as u64),
                );
                for (&offset, column) in router.cell_offsets.iter().zip(bins) {
                    for ((&row, &base), &fixed) in
                        scratch.rows.iter().zip(&scratch.base).zip(&scratch.fixed)
                    {
                        let bin: usize = column[row as usize].into();
                        let cell = base + offset + bin * 4;
                        hist[cell] = hist[cell].wrapping_add(1);
                        hist[cell + 2] = hist[cell + 2].wrapping_add(fixed);
                    }
                }
            }
        }
        Ok(())
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
        let include = if spec.filtered {
            next += 1;
            Some(cast(&values[next - 1], &DataType::Boolean)?)
        } else {
            None
        };
        let include = include.as_ref().map(|a| a.as_boolean());
        let labels = label.values();
        match BinColumns::new(&values[next..])? {
            BinColumns::Narrow(columns) => {
                let bins = value_slices::<UInt8Type>(&columns);
                self.accumulate(&router, &bins, labels, weights.as_ref(), include, rows)
            }
            BinColumns::Wide(columns) => {
                let bins = value_slices::<UInt16Type>(&columns);
                self.accumulate(&router, &bins, labels, weights.as_ref(), include, rows)
            }
        }
        .map_err(Error::into_datafusion)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(self.to_scalar())
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.hist.capacity() * 8
            + (self.scratch.nodes.capacity() + self.scratch.rows.capacity()) * 4
            + self.scratch.base.capacity() * size_of::<usize>()
            + self.scratch.fixed.capacity() * 8
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
    last: LastSpec,
}

impl Default for TreeScoreUdf {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
            last: LastSpec::default(),
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
        let router = self
            .last
            .router(SCORE_UDF, json)
            .map_err(Error::into_datafusion)?;
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
        let mut nodes = Vec::new();
        let routed = match BinColumns::new(&arrays)? {
            BinColumns::Narrow(columns) => {
                let bins = value_slices::<UInt8Type>(&columns);
                router
                    .check_bins(SCORE_UDF, &bins)
                    .map(|()| router.route_batch(&bins, None, rows, &mut nodes))
            }
            BinColumns::Wide(columns) => {
                let bins = value_slices::<UInt16Type>(&columns);
                router
                    .check_bins(SCORE_UDF, &bins)
                    .map(|()| router.route_batch(&bins, None, rows, &mut nodes))
            }
        };
        routed.map_err(Error::into_datafusion)?;
        let scores: Float64Array = nodes.iter().map(|&n| router.score[n as usize]).collect();
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}

/// `ml_tree_histogram(spec, label, [weight,] [include,] bins...)` as an expression.
pub(crate) fn histogram_expr(
    spec: &PassSpec,
    label: Expr,
    weight: Option<Expr>,
    include: Option<Expr>,
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
    args.extend(include);
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
            filtered: false,
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
            scratch: Scratch::default(),
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
    fn one_byte_bins_count_like_two_byte_bins() {
        let narrow = |v: Vec<u16>| -> ArrayRef {
            Arc::new(UInt8Array::from(
                v.into_iter().map(|b| b as u8).collect::<Vec<_>>(),
            ))
        };
        let (f0, f1) = (vec![1, 1, 2, 0, 1], vec![1, 0, 1, 1, 0]);
        let mut wide = accumulator(&spec());
        wide.update_batch(&batch(vec![1, 0, 1, 1, 0], f0.clone(), f1.clone()))
            .unwrap();
        let mut bytes = accumulator(&spec());
        let mut values = batch(vec![1, 0, 1, 1, 0], f0.clone(), f1.clone());
        values[2] = narrow(f0);
        values[3] = narrow(f1);
        bytes.update_batch(&values).unwrap();
        assert_eq!(bytes.hist, wide.hist);
        assert_eq!(
            wide.hist.iter().sum::<u64>(),
            2 * 3,
            "three rows, two features"
        );
    }

    #[test]
    fn rows_outside_the_row_set_are_skipped() {
        let filtered = PassSpec {
            filtered: true,
            ..spec()
        };
        let mut acc = accumulator(&filtered);
        let mut values = batch(vec![1, 0, 1, 0], vec![1, 1, 1, 1], vec![1, 0, 1, 0]);
        // Only the first and the last row are in the set (a null is not).
        values.insert(
            2,
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
            ])),
        );
        acc.update_batch(&values).unwrap();
        let mut expected = accumulator(&spec());
        expected
            .update_batch(&batch(vec![1, 0], vec![1, 1], vec![1, 0]))
            .unwrap();
        assert_eq!(acc.hist, expected.hist);
    }

    #[test]
    fn bins_past_a_feature_are_a_named_error() {
        let mut acc = accumulator(&spec());
        // Feature 1 has 2 bins.
        let err = acc
            .update_batch(&batch(vec![1], vec![1], vec![2]))
            .unwrap_err();
        assert!(err.to_string().contains("bin 2 of feature 1"), "{err}");
    }

    #[test]
    fn scores_follow_the_tree() {
        let router = Router::decode(SCORE_UDF, &serde_json::to_string(&spec()).unwrap()).unwrap();
        let (f0, f1): (Vec<u16>, Vec<u16>) = (vec![1, 2, 0], vec![0, 1, 1]);
        let mut nodes = Vec::new();
        router.route_batch(&[f0.as_slice(), f1.as_slice()], None, 3, &mut nodes);
        assert_eq!(nodes, vec![1, 2, 2], "bin 1 left; bin 2 and missing right");
        let scores: Vec<_> = nodes.iter().map(|&n| router.score[n as usize]).collect();
        assert_eq!(scores, vec![None, Some(0.25), Some(0.25)]);
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
        // A child that is an ancestor would make routing go round in circles.
        let mut cyclic = spec();
        cyclic.nodes[1] = RouteNode::Split {
            feature: 1,
            rule: BinRule::Upto {
                bin: 1,
                missing_left: true,
            },
            left: 0,
            right: 2,
        };
        let err =
            Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(&cyclic).unwrap()).unwrap_err();
        assert!(err.to_string().contains("tree"), "{err}");
    }
}
