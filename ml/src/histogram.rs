//! One pass of level-wise training as a DataFusion aggregate: `ml_tree_histogram(spec, label,
//! [weight,] [include,] [key,] [score,] bin_0, ..., bin_n)`. The spec literal carries the trees
//! grown so far (splits over bins; one tree for a decision tree, every tree of a forest with an
//! open node, the current tree of a boosted model) and which of their nodes are open in this
//! pass; each partition routes its rows down every tree and adds them to a flat
//! `node × feature × bin × statistic` histogram of integers. The statistics are class counts
//! (and fixed-point weight sums when there is a weight column) for classification trees, and
//! row counts with fixed-point sums of logistic-loss gradients and hessians, computed from a
//! score column, for boosted trees. A forest's rows count as often as their bootstrap
//! multiplicity, a pure function of the row's key hash and the tree's seed, so no sampling pass
//! exists and every executor draws the same sample. Partial histograms merge by integer
//! addition, so the result does not depend on how rows are partitioned or in which order partial
//! states merge. Everything a pass needs is inside the plan (the literal), never in
//! process-local state, so the function can be created by name on any executor. The same
//! routing serves the `ml_tree_score` UDF, which scores binned rows with finished trees. This
//! module does not choose splits.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, FieldRef, Float64Type, UInt8Type, UInt16Type, UInt64Type,
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
use crate::hash::mix64;
use crate::logistic::{sigmoid, to_fixed};

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

/// One node of a tree as a pass sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum RouteNode {
    /// An internal node: children are indices into its tree's nodes.
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
    /// A node this pass ignores; `score` is its value for `ml_tree_score` (a probability of
    /// class 1, or a boosted tree's margin).
    Leaf {
        /// The leaf's value.
        #[serde(with = "crate::exact")]
        score: f64,
    },
}

/// One tree of a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TreeRoute {
    /// The nodes; node 0 is the root.
    pub(crate) nodes: Vec<RouteNode>,
    /// Seeds the tree's row multiplicities when the pass samples.
    #[serde(default)]
    pub(crate) sample_seed: u64,
}

/// Row multiplicities drawn from a key column: a row counts `k` times in a tree, where `k` is
/// the number of `thresholds` at or below `mix64(key ^ sample_seed)`. A Poisson(λ) bootstrap
/// lists the CDF of Poisson(λ) scaled to 2⁶⁴; a subsample without replacement lists one
/// threshold. The driver computes the thresholds once, so executors only compare integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sampling {
    /// Ascending thresholds.
    pub(crate) thresholds: Vec<u64>,
}

impl Sampling {
    /// How many times a row with key hash `key` counts in the tree seeded `seed`.
    #[inline]
    pub(crate) fn multiplicity(&self, key: u64, seed: u64) -> u64 {
        let u = mix64(key ^ seed);
        // Counting from the start: multiplicities are small, so this stops after a comparison
        // or two where a binary search takes five.
        self.thresholds.iter().take_while(|t| **t <= u).count() as u64
    }
}

/// What the counters of one histogram cell hold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum CellKind {
    /// Rows of class 0 and 1, then (with a weight column) their fixed-point weights.
    #[default]
    Classes,
    /// Rows, the fixed-point sum of logistic-loss gradients and that of hessians, computed from
    /// the score column (a margin) and weighted by class and row weights.
    Gradients {
        /// Weights of class 0 and 1.
        #[serde(with = "crate::exact::pair")]
        class_weights: [f64; 2],
    },
}

impl CellKind {
    /// Counters per cell.
    pub(crate) fn stats(&self, weighted: bool) -> usize {
        match self {
            CellKind::Classes if weighted => 4,
            CellKind::Classes => 2,
            CellKind::Gradients { .. } => 3,
        }
    }
}

/// How `ml_tree_score` combines the values of the leaves a row reaches, one per tree.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum Combine {
    /// Their mean: a forest's probability (a single tree's leaf value itself).
    #[default]
    Mean,
    /// `init` plus each tree's value in tree order: a boosted model's margin.
    Sum {
        /// The starting margin.
        #[serde(with = "crate::exact")]
        init: f64,
    },
    /// The base column (the call's first argument after the spec) plus each tree's value in
    /// tree order: a margin updated by new trees, the same additions [`Combine::Sum`] makes.
    AddTo,
    /// The logistic function of [`Combine::Sum`]: a boosted model's probability.
    Logistic {
        /// The starting margin.
        #[serde(with = "crate::exact")]
        init: f64,
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
    /// The trees, each routed from its own root.
    pub(crate) trees: Vec<TreeRoute>,
    /// Number of open nodes (histogram blocks).
    pub(crate) slots: u32,
    /// Per slot, the features its block holds (ascending); empty when every block holds every
    /// feature. A forest's nodes each look at a random subset of the features, and only those
    /// are accumulated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) slot_features: Vec<Vec<u32>>,
    /// Row multiplicities from a key column (which then follows the include column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sampling: Option<Sampling>,
    /// What the cells count; gradients read a score column (after the key column).
    #[serde(default)]
    pub(crate) cells: CellKind,
    /// How `ml_tree_score` combines trees.
    #[serde(default)]
    pub(crate) combine: Combine,
}

impl PassSpec {
    /// A spec for scoring with finished trees (no open node).
    pub(crate) fn scoring(bins: Vec<u32>, trees: Vec<TreeRoute>, combine: Combine) -> Self {
        PassSpec {
            bins,
            weighted: false,
            filtered: false,
            trees,
            slots: 0,
            slot_features: Vec::new(),
            sampling: None,
            cells: CellKind::Classes,
            combine,
        }
    }

    /// Counters per cell.
    pub(crate) fn stats(&self) -> usize {
        self.cells.stats(self.weighted)
    }

    /// The layout of block `slot`.
    pub(crate) fn slot_layout(&self, slot: usize) -> Layout {
        match self.slot_features.get(slot) {
            Some(features) => Layout::subset(&self.bins, self.stats(), features),
            None => Layout::new(&self.bins, self.stats()),
        }
    }
}

/// Where a feature's and a bin's counters live in one node's block of the histogram.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// Start of each feature's bins within the block, in cells; `None` for a feature the block
    /// does not hold.
    pub(crate) offsets: Vec<Option<usize>>,
    /// Bins per feature.
    pub(crate) bins: Vec<usize>,
    /// Counters per cell.
    pub(crate) stats: usize,
    /// Counters in the block.
    pub(crate) node_stride: usize,
}

impl Layout {
    /// A block holding every feature.
    pub(crate) fn new(bins: &[u32], stats: usize) -> Self {
        let all: Vec<u32> = (0..bins.len() as u32).collect();
        Self::subset(bins, stats, &all)
    }

    /// A block holding the given features (ascending).
    pub(crate) fn subset(bins: &[u32], stats: usize, features: &[u32]) -> Self {
        let mut offsets = vec![None; bins.len()];
        let mut cells = 0usize;
        for &f in features {
            if let Some(slot) = offsets.get_mut(f as usize) {
                *slot = Some(cells);
                cells += bins[f as usize] as usize;
            }
        }
        Layout {
            offsets,
            bins: bins.iter().map(|b| *b as usize).collect(),
            stats,
            node_stride: cells * stats,
        }
    }

    /// Bytes of histogram for the block.
    pub(crate) fn bytes_per_node(&self) -> usize {
        self.node_stride * 8
    }
}

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

/// One tree within [`Router`]'s node array.
#[derive(Debug)]
struct RoutedTree {
    /// Its root.
    root: u32,
    /// Splits on its longest path from the root.
    depth: usize,
    /// Seed of its row multiplicities.
    sample_seed: u64,
}

/// The trees of a spec compiled for routing whole batches. All nodes of all trees sit in one
/// array; every node has two children and a "goes right" table over the bins of its feature; a
/// node that does not split is its own child on both sides, so routing is the same step
/// repeated `depth` times for every row, with no branch on the kind of node and no per-row loop
/// over the path (rows are independent, so the steps of many rows overlap in the CPU).
#[derive(Debug)]
struct Router {
    spec: PassSpec,
    /// Per node: how a row leaves it.
    steps: Vec<Step>,
    /// Per split node, one entry per bin of its feature: 1 when the bin goes right. Nodes that
    /// do not split share the all-zero table at offset 0.
    right: Vec<u8>,
    /// Per node: its histogram slot, or [`NO_SLOT`].
    slot: Vec<u32>,
    /// Per node: its leaf value (leaves only; `None` elsewhere).
    score: Vec<Option<f64>>,
    trees: Vec<RoutedTree>,
    /// Per slot: where its block starts in the histogram.
    slot_start: Vec<usize>,
    /// Per slot: the features of its block with where their counters start in it. One shared
    /// entry when every block holds every feature.
    slot_offsets: Vec<Vec<(u32, usize)>>,
    /// Counters in the whole histogram.
    cells: usize,
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
        if spec.trees.is_empty()
            || spec.trees.iter().any(|t| t.nodes.is_empty())
            || spec.bins.is_empty()
            || spec.bins.contains(&0)
        {
            return Err(bad(
                "the pass spec has no trees, an empty tree, no features or a feature without bins",
            ));
        }
        let total: usize = spec.trees.iter().map(|t| t.nodes.len()).sum();
        if total >= NO_SLOT as usize - 1 {
            return Err(bad("the pass spec has too many nodes"));
        }
        if !spec.slot_features.is_empty() {
            if spec.slot_features.len() != spec.slots as usize {
                return Err(bad(
                    "the pass spec lists features for a different number of slots",
                ));
            }
            for features in &spec.slot_features {
                let ascending = features.windows(2).all(|w| w[0] < w[1]);
                let known = features.iter().all(|f| (*f as usize) < spec.bins.len());
                if features.is_empty() || !ascending || !known {
                    return Err(bad("a slot's features are empty, unordered or unknown"));
                }
            }
        }
        if let Some(s) = &spec.sampling
            && !s.thresholds.windows(2).all(|w| w[0] <= w[1])
        {
            return Err(bad("the sampling thresholds are not ascending"));
        }
        // One more node than the trees have: [`Router::skip`], where rows outside the pass's
        // row set stay.
        let mut steps = Vec::with_capacity(total + 1);
        let mut right = vec![0u8; spec.bins[0] as usize];
        let mut slot = vec![NO_SLOT; total + 1];
        let mut score = vec![None; total + 1];
        let mut trees = Vec::with_capacity(spec.trees.len());
        for tree in &spec.trees {
            let base = steps.len() as u32;
            let n = tree.nodes.len();
            for (i, node) in tree.nodes.iter().enumerate() {
                let me = base + i as u32;
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
                            children: [base + *left, base + *r],
                        });
                        right.extend((0..bins).map(|b| {
                            u8::from(!rule.goes_left(u16::try_from(b).unwrap_or(u16::MAX)))
                        }));
                    }
                    RouteNode::Open { slot: s } => {
                        if *s >= spec.slots {
                            return Err(bad("the pass spec refers to a slot it does not have"));
                        }
                        steps.push(stay);
                        slot[me as usize] = *s;
                    }
                    RouteNode::Leaf { score: p } => {
                        steps.push(stay);
                        score[me as usize] = Some(*p);
                    }
                }
            }
            trees.push(RoutedTree {
                root: base,
                depth: tree_depth(&tree.nodes, &steps[base as usize..], base)
                    .ok_or_else(|| bad("the pass spec's nodes do not form a tree"))?,
                sample_seed: tree.sample_seed,
            });
        }
        let skip = total as u32;
        steps.push(Step {
            feature: 0,
            table: 0,
            children: [skip, skip],
        });
        let stats = spec.stats();
        let mut slot_start = Vec::with_capacity(spec.slots as usize);
        let mut slot_offsets = Vec::new();
        let mut cells = 0usize;
        for s in 0..spec.slots as usize {
            let layout = spec.slot_layout(s);
            slot_start.push(cells);
            cells += layout.node_stride;
            if s == 0 || !spec.slot_features.is_empty() {
                slot_offsets.push(
                    layout
                        .offsets
                        .iter()
                        .enumerate()
                        .filter_map(|(f, o)| o.map(|o| (f as u32, o * stats)))
                        .collect(),
                );
            }
        }
        Ok(Router {
            spec,
            steps,
            right,
            slot,
            score,
            trees,
            slot_start,
            slot_offsets,
            cells,
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
        (self.steps.len() - 1) as u32
    }

    /// The node of tree `tree` each row of a batch ends in, into `nodes`; rows that `include`
    /// does not mark true end in [`Router::skip`].
    fn route_batch<B: Bin>(
        &self,
        tree: usize,
        bins: &[&[B]],
        include: Option<&BooleanArray>,
        rows: usize,
        nodes: &mut Vec<u32>,
    ) {
        let RoutedTree { root, depth, .. } = self.trees[tree];
        nodes.clear();
        match include {
            None => nodes.resize(rows, root),
            Some(include) => {
                nodes.resize(rows, self.skip());
                for row in include.values().set_indices() {
                    nodes[row] = root;
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
        for _ in 0..depth {
            for (row, node) in nodes.iter_mut().enumerate() {
                let step = &self.steps[*node as usize];
                let bin: usize = bins[step.feature as usize][row].into();
                *node = step.children[usize::from(self.right[step.table as usize + bin])];
            }
        }
    }
}

/// Splits on the longest path of a tree whose compiled steps start at `base`, walking down from
/// the root; `None` when a node is reached twice (the nodes do not form a tree, and routing
/// could cycle).
fn tree_depth(nodes: &[RouteNode], steps: &[Step], base: u32) -> Option<usize> {
    let mut seen = vec![false; nodes.len()];
    let mut level = vec![0usize];
    let mut depth = 0usize;
    seen[0] = true;
    loop {
        let mut next = Vec::new();
        for &i in &level {
            if matches!(nodes[i], RouteNode::Split { .. }) {
                for c in steps[i].children {
                    let c = (c - base) as usize;
                    if std::mem::replace(&mut seen[c], true) {
                        return None;
                    }
                    next.push(c);
                }
            }
        }
        if next.is_empty() {
            return Some(depth);
        }
        depth += 1;
        level = next;
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
        let spec = &router.spec;
        let expected = 2
            + usize::from(spec.weighted)
            + usize::from(spec.filtered)
            + usize::from(spec.sampling.is_some())
            + usize::from(matches!(spec.cells, CellKind::Gradients { .. }))
            + spec.bins.len();
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
        let cells = router.cells;
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

/// Buffers reused from batch to batch. A row that reaches an open node of some tree is one
/// entry (a row can be an entry of several trees).
#[derive(Debug, Default)]
struct Scratch {
    /// The node of each row in the tree being routed.
    nodes: Vec<u32>,
    /// Per entry: its row.
    rows: Vec<u32>,
    /// Per entry: its slot.
    slots: Vec<u32>,
    /// Per entry: the index of its first counter in a cell of bin 0 of the block's first
    /// feature (the block's start, plus the class for class counts).
    base: Vec<usize>,
    /// Per entry: how many times it counts.
    mult: Vec<u64>,
    /// Per entry: its fixed-point weight times `mult` (weighted class counts), or its gradient
    /// times `mult` (gradients).
    fixed: Vec<u64>,
    /// Per entry: its fixed-point hessian times `mult` (gradients).
    hess: Vec<u64>,
}

/// The columns of one batch of `ml_tree_histogram`'s arguments.
struct Inputs<'a> {
    labels: &'a [u8],
    weights: Option<&'a Float64Array>,
    include: Option<&'a BooleanArray>,
    keys: Option<&'a UInt64Array>,
    scores: Option<&'a Float64Array>,
    rows: usize,
}

/// How an entry adds itself to a cell; one implementation per kind of cell, so that each
/// accumulation loop is compiled for exactly one.
trait AddEntry {
    /// Counters per cell.
    const STATS: usize;
    fn add(&self, hist: &mut [u64], cell: usize, entry: usize);
}

/// Class counts, every row once.
struct Once;

impl AddEntry for Once {
    const STATS: usize = 2;
    #[inline(always)]
    fn add(&self, hist: &mut [u64], cell: usize, _: usize) {
        hist[cell] = hist[cell].wrapping_add(1);
    }
}

/// Class counts, rows counted by their multiplicity.
struct Times<'a>(&'a [u64]);

impl AddEntry for Times<'_> {
    const STATS: usize = 2;
    #[inline(always)]
    fn add(&self, hist: &mut [u64], cell: usize, entry: usize) {
        hist[cell] = hist[cell].wrapping_add(self.0[entry]);
    }
}

/// Class counts and fixed-point weights.
struct Weighted<'a> {
    mult: &'a [u64],
    fixed: &'a [u64],
}

impl AddEntry for Weighted<'_> {
    const STATS: usize = 4;
    #[inline(always)]
    fn add(&self, hist: &mut [u64], cell: usize, entry: usize) {
        hist[cell] = hist[cell].wrapping_add(self.mult[entry]);
        hist[cell + 2] = hist[cell + 2].wrapping_add(self.fixed[entry]);
    }
}

/// Rows, gradients and hessians.
struct Gradient<'a> {
    mult: &'a [u64],
    grad: &'a [u64],
    hess: &'a [u64],
}

impl AddEntry for Gradient<'_> {
    const STATS: usize = 3;
    #[inline(always)]
    fn add(&self, hist: &mut [u64], cell: usize, entry: usize) {
        hist[cell] = hist[cell].wrapping_add(self.mult[entry]);
        hist[cell + 1] = hist[cell + 1].wrapping_add(self.grad[entry]);
        hist[cell + 2] = hist[cell + 2].wrapping_add(self.hess[entry]);
    }
}

/// Adds every entry to every feature of its block, one tight loop per feature. For blocks that
/// all hold the same features.
fn add_by_feature<B: Bin, A: AddEntry>(
    hist: &mut [u64],
    offsets: &[(u32, usize)],
    bins: &[&[B]],
    rows: &[u32],
    base: &[usize],
    adder: &A,
) {
    for &(f, offset) in offsets {
        let column = bins[f as usize];
        for (entry, (&row, &b)) in rows.iter().zip(base).enumerate() {
            let bin: usize = column[row as usize].into();
            adder.add(hist, b + offset + bin * A::STATS, entry);
        }
    }
}

/// Adds every entry to the features of its own block. For blocks with different features.
fn add_by_entry<B: Bin, A: AddEntry>(
    hist: &mut [u64],
    slot_offsets: &[Vec<(u32, usize)>],
    bins: &[&[B]],
    scratch: &Scratch,
    adder: &A,
) {
    for (entry, ((&row, &b), &slot)) in scratch
        .rows
        .iter()
        .zip(&scratch.base)
        .zip(&scratch.slots)
        .enumerate()
    {
        for &(f, offset) in &slot_offsets[slot as usize] {
            let bin: usize = bins[f as usize][row as usize].into();
            adder.add(hist, b + offset + bin * A::STATS, entry);
        }
    }
}

impl HistogramAccumulator {
    fn to_scalar(&self) -> ScalarValue {
        let mut bytes = Vec::with_capacity(self.hist.len() * 8);
        for v in &self.hist {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ScalarValue::Binary(Some(bytes))
    }

    /// Routes a batch down every tree and adds the rows of open nodes to their histograms.
    fn accumulate<B: Bin>(
        &mut self,
        router: &Router,
        bins: &[&[B]],
        input: &Inputs<'_>,
    ) -> Result<()> {
        router.check_bins(HISTOGRAM_UDAF, bins)?;
        let spec = &router.spec;
        let scratch = &mut self.scratch;
        // The entries of every tree: rows of open nodes that count at least once. (Grouping
        // them by node first, for cache locality, measured slower: a block is small enough.)
        scratch.rows.clear();
        scratch.slots.clear();
        scratch.mult.clear();
        for (t, tree) in router.trees.iter().enumerate() {
            router.route_batch(t, bins, input.include, input.rows, &mut scratch.nodes);
            for (row, &node) in scratch.nodes.iter().enumerate() {
                let slot = router.slot[node as usize];
                if slot == NO_SLOT {
                    continue;
                }
                let k = match (&spec.sampling, input.keys) {
                    (Some(s), Some(keys)) => s.multiplicity(keys.value(row), tree.sample_seed),
                    _ => 1,
                };
                if k > 0 {
                    scratch.rows.push(row as u32);
                    scratch.slots.push(slot);
                    scratch.mult.push(k);
                }
            }
        }
        let class = |row: u32| usize::from(input.labels[row as usize] != 0);
        scratch.base.clear();
        scratch.fixed.clear();
        scratch.hess.clear();
        match spec.cells {
            CellKind::Classes => {
                scratch.base.extend(
                    scratch
                        .rows
                        .iter()
                        .zip(&scratch.slots)
                        .map(|(&row, &slot)| router.slot_start[slot as usize] + class(row)),
                );
                if let Some(w) = input.weights {
                    scratch
                        .fixed
                        .extend(scratch.rows.iter().zip(&scratch.mult).map(|(&row, &k)| {
                            ((w.value(row as usize) * WEIGHT_SCALE).round() as u64).wrapping_mul(k)
                        }));
                }
            }
            CellKind::Gradients { class_weights } => {
                let Some(scores) = input.scores else {
                    return Err(Error::FunctionArgument {
                        function: HISTOGRAM_UDAF,
                        reason: "gradients need a score column".to_string(),
                    });
                };
                for (&row, (&slot, &k)) in scratch
                    .rows
                    .iter()
                    .zip(scratch.slots.iter().zip(&scratch.mult))
                {
                    let r = row as usize;
                    let y = class(row);
                    let p = sigmoid(scores.value(r));
                    let w = class_weights[y] * input.weights.map_or(1.0, |w| w.value(r));
                    let g = to_fixed((p - y as f64) * w) as u64;
                    let h = to_fixed(p * (1.0 - p) * w) as u64;
                    scratch.base.push(router.slot_start[slot as usize]);
                    scratch.fixed.push(g.wrapping_mul(k));
                    scratch.hess.push(h.wrapping_mul(k));
                }
            }
        }
        let hist = &mut self.hist;
        let scratch = &self.scratch;
        let grouped = !spec.slot_features.is_empty();
        macro_rules! add {
            ($adder:expr) => {
                if grouped {
                    add_by_entry(hist, &router.slot_offsets, bins, scratch, &$adder)
                } else {
                    let offsets = router.slot_offsets.first().map_or(&[][..], Vec::as_slice);
                    add_by_feature(hist, offsets, bins, &scratch.rows, &scratch.base, &$adder)
                }
            };
        }
        match (spec.cells, input.weights.is_some(), spec.sampling.is_some()) {
            (CellKind::Classes, false, false) => add!(Once),
            (CellKind::Classes, false, true) => add!(Times(&scratch.mult)),
            (CellKind::Classes, true, _) => add!(Weighted {
                mult: &scratch.mult,
                fixed: &scratch.fixed,
            }),
            (CellKind::Gradients { .. }, _, _) => add!(Gradient {
                mult: &scratch.mult,
                grad: &scratch.fixed,
                hess: &scratch.hess,
            }),
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

/// The next argument of a call as an array of `data_type`, when `present`.
fn optional_arg(
    values: &[ArrayRef],
    next: &mut usize,
    present: bool,
    data_type: &DataType,
) -> DfResult<Option<ArrayRef>> {
    if !present {
        return Ok(None);
    }
    let array = cast(&values[*next], data_type)?;
    *next += 1;
    Ok(Some(array))
}

impl Accumulator for HistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let router = Arc::clone(&self.router);
        let spec = &router.spec;
        let rows = values.first().map_or(0, |a| a.len());
        let label = cast(&values[1], &DataType::UInt8)?;
        let mut next = 2;
        let weights = optional_arg(values, &mut next, spec.weighted, &DataType::Float64)?;
        let include = optional_arg(values, &mut next, spec.filtered, &DataType::Boolean)?;
        let keys = optional_arg(
            values,
            &mut next,
            spec.sampling.is_some(),
            &DataType::UInt64,
        )?;
        let gradients = matches!(spec.cells, CellKind::Gradients { .. });
        let scores = optional_arg(values, &mut next, gradients, &DataType::Float64)?;
        let input = Inputs {
            labels: label.as_primitive::<UInt8Type>().values(),
            weights: weights.as_ref().map(|a| a.as_primitive::<Float64Type>()),
            include: include.as_ref().map(|a| a.as_boolean()),
            keys: keys.as_ref().map(|a| a.as_primitive::<UInt64Type>()),
            scores: scores.as_ref().map(|a| a.as_primitive::<Float64Type>()),
            rows,
        };
        match BinColumns::new(&values[next..])? {
            BinColumns::Narrow(columns) => {
                let bins = value_slices::<UInt8Type>(&columns);
                self.accumulate(&router, &bins, &input)
            }
            BinColumns::Wide(columns) => {
                let bins = value_slices::<UInt16Type>(&columns);
                self.accumulate(&router, &bins, &input)
            }
        }
        .map_err(Error::into_datafusion)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(self.to_scalar())
    }

    fn size(&self) -> usize {
        let s = &self.scratch;
        size_of_val(self)
            + self.hist.capacity() * 8
            + (s.nodes.capacity() + s.rows.capacity() + s.slots.capacity()) * 4
            + s.base.capacity() * size_of::<usize>()
            + (s.mult.capacity() + s.fixed.capacity() + s.hess.capacity()) * 8
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

/// `ml_tree_score(spec, [base,] bin_0, ..., bin_n) -> Float64`: the leaf values binned rows reach
/// in the spec's trees, combined as the spec says (a tree's or a forest's probability of class
/// 1, a boosted model's margin or probability).
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

impl Router {
    /// The combined score of every row of a batch; `None` for a row that reaches a node without
    /// a value in some tree, or whose base is null.
    fn score_batch<B: Bin>(
        &self,
        bins: &[&[B]],
        base: Option<&Float64Array>,
        rows: usize,
    ) -> Vec<Option<f64>> {
        let combine = self.spec.combine;
        let mut acc: Vec<Option<f64>> = match (combine, base) {
            (Combine::AddTo, Some(base)) => base.iter().collect(),
            (Combine::Sum { init } | Combine::Logistic { init }, _) => vec![Some(init); rows],
            _ => vec![Some(0.0); rows],
        };
        let mut nodes = Vec::new();
        for t in 0..self.trees.len() {
            self.route_batch(t, bins, None, rows, &mut nodes);
            for (a, &node) in acc.iter_mut().zip(&nodes) {
                *a = match (*a, self.score[node as usize]) {
                    (Some(a), Some(v)) => Some(a + v),
                    _ => None,
                };
            }
        }
        let trees = self.trees.len() as f64;
        for a in acc.iter_mut().flatten() {
            match combine {
                Combine::Mean => *a /= trees,
                Combine::Logistic { .. } => *a = sigmoid(*a),
                Combine::Sum { .. } | Combine::AddTo => {}
            }
        }
        acc
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
        let mut arrays = values
            .map(|v| v.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let based = router.spec.combine == Combine::AddTo;
        let expected = router.spec.bins.len() + usize::from(based);
        if arrays.len() != expected {
            return Err(Error::FunctionArgument {
                function: SCORE_UDF,
                reason: format!("expected {expected} columns, got {}", arrays.len()),
            }
            .into_datafusion());
        }
        let base = if based {
            Some(cast(&arrays.remove(0), &DataType::Float64)?)
        } else {
            None
        };
        let base = base.as_ref().map(|b| b.as_primitive::<Float64Type>());
        let scores = match BinColumns::new(&arrays)? {
            BinColumns::Narrow(columns) => {
                let bins = value_slices::<UInt8Type>(&columns);
                router
                    .check_bins(SCORE_UDF, &bins)
                    .map(|()| router.score_batch(&bins, base, rows))
            }
            BinColumns::Wide(columns) => {
                let bins = value_slices::<UInt16Type>(&columns);
                router
                    .check_bins(SCORE_UDF, &bins)
                    .map(|()| router.score_batch(&bins, base, rows))
            }
        }
        .map_err(Error::into_datafusion)?;
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(scores))))
    }
}

/// The optional columns of a histogram pass, in argument order.
#[derive(Debug, Default)]
pub(crate) struct PassColumns {
    /// Row weights (with [`PassSpec::weighted`]).
    pub(crate) weight: Option<Expr>,
    /// Which rows count (with [`PassSpec::filtered`]).
    pub(crate) include: Option<Expr>,
    /// Row key hashes (with [`PassSpec::sampling`]).
    pub(crate) key: Option<Expr>,
    /// Margins (with [`CellKind::Gradients`]).
    pub(crate) score: Option<Expr>,
}

/// `ml_tree_histogram(spec, label, [weight,] [include,] [key,] [score,] bins...)` as an
/// expression.
pub(crate) fn histogram_expr(
    spec: &PassSpec,
    label: Expr,
    columns: PassColumns,
    bins: Vec<Expr>,
) -> Result<Expr> {
    // Dictionary-encoded, so that evaluating the literal for a batch of rows repeats a key, not
    // the spec's text.
    let spec = ScalarValue::Dictionary(
        Box::new(DataType::Int32),
        Box::new(ScalarValue::Utf8(Some(serde_json::to_string(spec)?))),
    );
    let mut args = vec![lit(spec), label];
    args.extend(columns.weight);
    args.extend(columns.include);
    args.extend(columns.key);
    args.extend(columns.score);
    args.extend(bins);
    Ok(TreeHistogramUdaf::udaf().call(args))
}

/// `ml_tree_score(spec, [base,] bins...)` as an expression.
pub(crate) fn score_expr(spec: &PassSpec, base: Option<Expr>, bins: Vec<Expr>) -> Result<Expr> {
    let mut args = vec![lit(serde_json::to_string(spec)?)];
    args.extend(base);
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

    fn tree() -> TreeRoute {
        // Root splits feature 0 at bin 1; the left child is open, the right one is a leaf.
        TreeRoute {
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
            sample_seed: 0,
        }
    }

    fn spec() -> PassSpec {
        PassSpec {
            slots: 1,
            ..PassSpec::scoring(vec![3, 2], vec![tree()], Combine::Mean)
        }
    }

    fn accumulator(spec: &PassSpec) -> HistogramAccumulator {
        let router = Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(spec).unwrap()).unwrap();
        let cells = router.cells;
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
        router.route_batch(0, &[f0.as_slice(), f1.as_slice()], None, 3, &mut nodes);
        assert_eq!(nodes, vec![1, 2, 2], "bin 1 left; bin 2 and missing right");
        let scores = router.score_batch(&[f0.as_slice(), f1.as_slice()], None, 3);
        assert_eq!(scores, vec![None, Some(0.25), Some(0.25)]);
    }

    #[test]
    fn scores_combine_trees_by_mean_and_by_sum() {
        let stump = |bin, low, high| TreeRoute {
            nodes: vec![
                RouteNode::Split {
                    feature: 0,
                    rule: BinRule::Upto {
                        bin,
                        missing_left: true,
                    },
                    left: 1,
                    right: 2,
                },
                RouteNode::Leaf { score: low },
                RouteNode::Leaf { score: high },
            ],
            sample_seed: 0,
        };
        let trees = vec![stump(1, 0.25, 0.5), stump(2, 0.0, 1.0)];
        let f0: Vec<u16> = vec![1, 2, 3];
        let f1: Vec<u16> = vec![0, 0, 0];
        let bins = [f0.as_slice(), f1.as_slice()];
        let score = |combine| {
            let spec = PassSpec::scoring(vec![4, 2], trees.clone(), combine);
            Router::decode(SCORE_UDF, &serde_json::to_string(&spec).unwrap())
                .unwrap()
                .score_batch(&bins, None, 3)
        };
        assert_eq!(
            score(Combine::Mean),
            vec![Some(0.125), Some(0.25), Some(0.75)]
        );
        assert_eq!(
            score(Combine::Sum { init: -1.0 }),
            vec![Some(-0.75), Some(-0.5), Some(0.5)]
        );
        let logistic = score(Combine::Logistic { init: -1.0 });
        assert_eq!(logistic[2], Some(sigmoid(0.5)));
        let spec = PassSpec::scoring(vec![4, 2], trees.clone(), Combine::AddTo);
        let router = Router::decode(SCORE_UDF, &serde_json::to_string(&spec).unwrap()).unwrap();
        let base = Float64Array::from(vec![Some(-1.0), None, Some(-1.0)]);
        assert_eq!(
            router.score_batch(&bins, Some(&base), 3),
            vec![Some(-0.75), None, Some(0.5)]
        );
    }

    #[test]
    fn poisson_multiplicities_have_the_bootstrap_mean_and_count_rows_that_often() {
        // CDF of Poisson(1) scaled to 2^64.
        let mut thresholds = Vec::new();
        let (mut p, mut cdf) = (std::f64::consts::E.recip(), 0.0);
        for k in 0..20 {
            cdf += p;
            p /= f64::from(k + 1);
            thresholds.push((cdf * 18_446_744_073_709_551_616.0) as u64);
        }
        let sampling = Sampling { thresholds };
        let n = 100_000u64;
        let counts: Vec<u64> = (0..n)
            .map(|i| sampling.multiplicity(mix64(i), 99))
            .collect();
        let mean = counts.iter().sum::<u64>() as f64 / n as f64;
        let zeros = counts.iter().filter(|k| **k == 0).count() as f64 / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((zeros - (-1f64).exp()).abs() < 0.01, "{zeros}");
        // A pass counts each row as often as its multiplicity says.
        let sampled = PassSpec {
            sampling: Some(sampling.clone()),
            trees: vec![TreeRoute {
                sample_seed: 99,
                ..tree()
            }],
            ..spec()
        };
        let keys: Vec<u64> = (0..6).map(mix64).collect();
        let mut acc = accumulator(&sampled);
        let mut values = batch(vec![1; 6], vec![1; 6], vec![1; 6]);
        values.insert(2, Arc::new(UInt64Array::from(keys.clone())));
        acc.update_batch(&values).unwrap();
        let expected: u64 = keys.iter().map(|k| sampling.multiplicity(*k, 99)).sum();
        // Class 1 of bin 1 of feature 0.
        assert_eq!(acc.hist[3], expected);
    }

    #[test]
    fn blocks_hold_only_their_features_and_trees_route_independently() {
        // Two trees, each a single open root: slot 0 holds feature 1 only, slot 1 both.
        let open = |slot| TreeRoute {
            nodes: vec![RouteNode::Open { slot }],
            sample_seed: 0,
        };
        let subsets = PassSpec {
            slots: 2,
            slot_features: vec![vec![1], vec![0, 1]],
            ..PassSpec::scoring(vec![3, 2], vec![open(0), open(1)], Combine::Mean)
        };
        let mut acc = accumulator(&subsets);
        acc.update_batch(&batch(vec![1, 0], vec![1, 2], vec![1, 1]))
            .unwrap();
        // Slot 0: feature 1 (2 bins × 2 classes); slot 1: feature 0 (3 bins) then feature 1.
        assert_eq!(
            acc.hist,
            vec![0, 0, 1, 1, /* slot 1 */ 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn gradients_are_fixed_point_sums_of_the_logistic_loss() {
        let gradients = PassSpec {
            cells: CellKind::Gradients {
                class_weights: [1.0, 2.0],
            },
            ..spec()
        };
        let mut acc = accumulator(&gradients);
        let mut values = batch(vec![1, 0], vec![1, 1], vec![1, 1]);
        values.insert(2, Arc::new(Float64Array::from(vec![0.0, 0.3])));
        acc.update_batch(&values).unwrap();
        let p = sigmoid(0.3);
        let g = to_fixed(0.5 - 1.0) * 2 + to_fixed(p);
        let h = to_fixed(0.25 * 2.0) + to_fixed(p * (1.0 - p));
        // Feature 0, bin 1: rows, gradient, hessian.
        assert_eq!(&acc.hist[3..6], &[2, g as u64, h as u64]);
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
        bad.trees[0].nodes[0] = RouteNode::Split {
            feature: 9,
            rule: BinRule::Set { bins: vec![1] },
            left: 1,
            right: 2,
        };
        assert!(Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(&bad).unwrap()).is_err());
        // A child that is an ancestor would make routing go round in circles.
        let mut cyclic = spec();
        cyclic.trees[0].nodes[1] = RouteNode::Split {
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
        let mut subsets = spec();
        subsets.slot_features = vec![vec![1, 0]];
        assert!(Router::decode(HISTOGRAM_UDAF, &serde_json::to_string(&subsets).unwrap()).is_err());
    }
}
