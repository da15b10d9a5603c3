//! Histogram passes over binned rows held in this process, for [`Storage::Memory`]: the same
//! integer histograms `ml_tree_histogram` returns, computed without routing every row from the
//! root of every tree at every level. The rows of a pass's row set are read once per fit into
//! column-major arrays (one byte or two per bin, the class as one byte, weights and key hashes
//! when the pass needs them). Each tree keeps the rows of its sample in an order where every node
//! owns a contiguous range, as scikit-learn's and LightGBM's builders do: a row's multiplicity is
//! drawn once per tree, a split partitions its node's range (stably, so rows stay ascending and
//! reads stay sequential), and a node's histogram reads only its own rows and only the features
//! its block holds. This is MLlib's node-id cache taken one step further, and the reason a deep
//! forest costs rows × trees × features per node per level rather than that times the depth.
//! Boosting holds each row's margin too: before a tree its gradient and hessian are computed
//! from it as the aggregate computes them from its score column, and after the tree the leaf
//! value the row reaches is added to it.
//!
//! Every counter is an integer sum of the same per-row terms the aggregate adds, so the
//! histograms, and with them the models, are bit for bit those of the aggregate on any
//! partitioning (the tests compare them). Nodes' blocks, and the parts of a large one, are
//! accumulated on the machine's cores; integer sums do not depend on how the work is shared. A
//! cluster never takes this path: executors keep nothing between jobs, so [`Storage::Inline`]
//! passes stay plans.
//!
//! [`Storage::Memory`]: crate::prepare::Storage::Memory
//! [`Storage::Inline`]: crate::prepare::Storage::Inline

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt8Type, UInt16Type, UInt64Type};
use datafusion::prelude::{DataFrame, Expr};

use crate::dataset::column;
use crate::error::{Error, Result};
use crate::grow::{GrowNode, PassSource, TreePlan};
use crate::histogram::{
    Bin, BinRule, CellKind, Layout, RouteNode, Sampling, TreeRoute, WEIGHT_SCALE,
};
use crate::logistic::{sigmoid, to_fixed};
use crate::prepare::{BinnedDataset, LABEL_COL, WEIGHT_COL};

/// Bin columns of the held rows, all of one width.
#[derive(Debug)]
enum BinColumns {
    Narrow(Vec<Vec<u8>>),
    Wide(Vec<Vec<u16>>),
}

/// The rows of one row set, column-major.
#[derive(Debug)]
struct Rows {
    /// Per row: 0 or 1.
    class: Vec<u8>,
    /// Per row: its weight (with a weight column).
    weights: Option<Vec<f64>>,
    /// Per row: its weight in fixed point, as class counts add it (with a weight column).
    fixed: Option<Vec<u64>>,
    /// Per row: the hash its multiplicities are drawn from (when trees sample).
    keys: Option<Vec<u64>>,
    bins: BinColumns,
    /// Bins per feature.
    num_bins: Vec<u32>,
}

/// One tree's sample: its rows (indices into [`Rows`]) ordered so that every node whose
/// range is known owns `order[start..end]`, and their multiplicities.
#[derive(Debug, Default)]
struct TreeRows {
    started: bool,
    order: Vec<u32>,
    /// Multiplicity of `order[i]` (empty when every row counts once).
    mult: Vec<u8>,
    /// Per grow node: its range in `order`, once known.
    ranges: Vec<Option<(u32, u32)>>,
    /// The right side of a partition while it is made.
    scratch: Vec<(u32, u8)>,
}

/// Passes over held rows for one fit: the rows and every tree's sample.
#[derive(Debug)]
pub(crate) struct ResidentPasses {
    rows: Rows,
    trees: Vec<TreeRows>,
    sampling: Option<Sampling>,
    /// Counters per cell: 2 (class counts), 4 (and fixed-point weights) or 3 (rows, gradient
    /// and hessian sums).
    stats: usize,
    /// Per row: its fixed-point gradient and hessian at the margins of the trees so far
    /// (boosting; set before each tree).
    gradients: Option<(Vec<u64>, Vec<u64>)>,
    threads: usize,
}

/// One tree's part of a pass's first step: its rows, the nodes whose ranges the pass needs,
/// its grown nodes and its sample seed.
type TreeJob<'a, S> = (&'a mut TreeRows, &'a [usize], &'a [GrowNode<S>], u64);

/// What a core accumulates at a time: a node's rows (or a part of them) into a block.
struct Work<'a> {
    order: &'a [u32],
    mult: &'a [u8],
    block: &'a mut [u64],
    offsets: Vec<(usize, usize)>,
}

impl ResidentPasses {
    /// Reads the rows a source includes, with the columns passes of `cells` need, for `trees`
    /// trees.
    pub(crate) async fn load(
        dataset: &BinnedDataset,
        source: &PassSource,
        cells: CellKind,
        weighted: bool,
        sampling: Option<Sampling>,
        trees: usize,
    ) -> Result<Self> {
        if sampling.is_some() && source.key.is_none() {
            return Err(lost("sampled trees need the row key hash".into()));
        }
        let key = sampling.as_ref().and(source.key.clone());
        let rows = Rows::load(
            dataset,
            source.df.clone(),
            source.include.clone(),
            weighted,
            key,
        )
        .await?;
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        Ok(ResidentPasses {
            rows,
            trees: (0..trees).map(|_| TreeRows::default()).collect(),
            sampling,
            stats: cells.stats(weighted),
            gradients: None,
            threads,
        })
    }

    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.rows.class.len()
    }

    /// Starts a new boosted tree: every row's gradient and hessian at `margins` (one per held
    /// row), computed as `ml_tree_histogram` computes them from its score column.
    pub(crate) fn start_boosted_tree(&mut self, margins: &[f64], class_weights: [f64; 2]) {
        let rows = &self.rows;
        let mut gh = vec![(0u64, 0u64); margins.len()];
        in_chunks(&mut gh, self.threads, |first, chunk| {
            for (i, out) in chunk.iter_mut().enumerate() {
                let r = first + i;
                let y = usize::from(rows.class[r]);
                let p = sigmoid(margins[r]);
                let w = class_weights[y] * rows.weights.as_ref().map_or(1.0, |w| w[r]);
                *out = (
                    to_fixed((p - y as f64) * w) as u64,
                    to_fixed(p * (1.0 - p) * w) as u64,
                );
            }
        });
        self.gradients = Some(gh.into_iter().unzip());
        self.trees = vec![TreeRows::default()];
    }

    /// Adds to each held row's margin the value of the leaf it reaches in `tree` (the same
    /// addition `ml_tree_score` makes to the score column).
    pub(crate) fn add_tree(&self, tree: &TreeRoute, margins: &mut [f64]) -> Result<()> {
        let errors = Mutex::new(None);
        in_chunks(margins, self.threads, |first, chunk| {
            if let Err(e) = self.rows.add_tree(tree, first, chunk) {
                *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
        match errors.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The histograms of a group of nodes, `(tree, node)` per slot, each block laid out as
    /// `layouts` says, concatenated in slot order: what `ml_tree_histogram` returns for the
    /// same pass.
    pub(crate) fn pass<S: Sync>(
        &mut self,
        group: &[(usize, usize)],
        layouts: &[Layout],
        nodes: &[Vec<GrowNode<S>>],
        plans: &[TreePlan],
    ) -> Result<Vec<u64>> {
        let n = self.rows.class.len();
        // Every tree of the group knows its nodes' ranges first (splitting the ranges of the
        // nodes split since the last pass), one tree per core at a time.
        let mut wanted: Vec<Vec<usize>> = vec![Vec::new(); self.trees.len()];
        for &(t, node) in group {
            wanted
                .get_mut(t)
                .ok_or_else(|| lost(format!("tree {t} is not held")))?
                .push(node);
        }
        {
            let rows = &self.rows;
            let sampling = self.sampling.as_ref();
            let jobs: Vec<TreeJob<'_, S>> = self
                .trees
                .iter_mut()
                .zip(&wanted)
                .zip(nodes)
                .zip(plans)
                .filter(|(((_, w), _), _)| !w.is_empty())
                .map(|(((tree, w), nodes), plan)| {
                    (tree, w.as_slice(), nodes.as_slice(), plan.sample_seed)
                })
                .collect();
            let cores = self.threads.min(jobs.len());
            let jobs = Mutex::new(jobs);
            let errors: Mutex<Option<Error>> = Mutex::new(None);
            on_cores(cores, || {
                loop {
                    let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some((tree, wanted, nodes, seed)) = job else {
                        break;
                    };
                    if !tree.started {
                        tree.start(rows, sampling, seed, n);
                    }
                    tree.ranges.resize(nodes.len(), None);
                    for &node in wanted {
                        if let Err(e) = tree.ensure(node, nodes, rows) {
                            *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    }
                }
            });
            if let Some(e) = errors.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
        }
        // Then every slot's block, the largest first so the cores finish together. A slot worth
        // more than a core's share of the pass (a root, a boosted tree's first levels) is split
        // among the cores, each part counted into a block of its own and added afterwards.
        let threads = self.threads;
        let mut ranges = Vec::with_capacity(group.len());
        for (&(t, node), layout) in group.iter().zip(layouts) {
            let (start, end) = self.trees[t].ranges[node]
                .ok_or_else(|| lost(format!("node {node} of tree {t} has no rows")))?;
            let features = layout.offsets.iter().flatten().count();
            ranges.push((t, start as usize, end as usize, features));
        }
        let cost: usize = ranges.iter().map(|(_, s, e, f)| (e - s) * f).sum();
        let parts: Vec<usize> = ranges
            .iter()
            .map(|&(_, s, e, f)| {
                if threads > 1 && (e - s) * f * threads > cost && e - s >= 4096 {
                    threads
                } else {
                    1
                }
            })
            .collect();
        let mut private: Vec<Vec<u64>> = parts
            .iter()
            .zip(layouts)
            .flat_map(|(&p, layout)| (1..p).map(|_| vec![0u64; layout.node_stride]))
            .collect();
        let total: usize = layouts.iter().map(|l| l.node_stride).sum();
        let mut hist = vec![0u64; total];
        {
            let mut work = Vec::with_capacity(group.len());
            let mut rest = hist.as_mut_slice();
            let mut spare = private.iter_mut();
            for ((&(t, start, end, _), layout), &p) in ranges.iter().zip(layouts).zip(&parts) {
                let (block, tail) = rest.split_at_mut(layout.node_stride);
                rest = tail;
                let tree = &self.trees[t];
                let offsets: Vec<(usize, usize)> = layout
                    .offsets
                    .iter()
                    .enumerate()
                    .filter_map(|(f, o)| o.map(|o| (f, o * self.stats)))
                    .collect();
                let mut block = Some(block);
                for i in 0..p {
                    let (a, b) = (
                        start + (end - start) * i / p,
                        start + (end - start) * (i + 1) / p,
                    );
                    let target = match block.take() {
                        Some(block) => block,
                        None => spare
                            .next()
                            .ok_or_else(|| lost("a slot's part has no block".into()))?
                            .as_mut_slice(),
                    };
                    work.push(Work {
                        order: &tree.order[a..b],
                        mult: if tree.mult.is_empty() {
                            &[]
                        } else {
                            &tree.mult[a..b]
                        },
                        block: target,
                        offsets: offsets.clone(),
                    });
                }
            }
            work.sort_by_key(|w| std::cmp::Reverse(w.order.len() * w.offsets.len()));
            let next = AtomicUsize::new(0);
            let work: Vec<Mutex<Option<Work<'_>>>> =
                work.into_iter().map(|w| Mutex::new(Some(w))).collect();
            let rows = &self.rows;
            let gradients = self.gradients.as_ref();
            on_cores(threads.min(work.len()), || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = work.get(i) else {
                        break;
                    };
                    let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(mut w) = taken {
                        rows.accumulate(&mut w, gradients);
                    }
                }
            });
        }
        // Integer sums: the parts add up to the same counters in any order.
        let mut spare = private.iter();
        let mut rest = hist.as_mut_slice();
        for (layout, &p) in layouts.iter().zip(&parts) {
            let (block, tail) = rest.split_at_mut(layout.node_stride);
            rest = tail;
            for _ in 1..p {
                if let Some(part) = spare.next() {
                    for (c, v) in block.iter_mut().zip(part) {
                        *c = c.wrapping_add(*v);
                    }
                }
            }
        }
        Ok(hist)
    }
}

/// Runs `work` on `cores` cores: this thread and `cores - 1` scoped ones (passes are short,
/// so a single core's work is not handed to a thread of its own).
fn on_cores(cores: usize, work: impl Fn() + Sync) {
    std::thread::scope(|scope| {
        for _ in 1..cores {
            scope.spawn(&work);
        }
        work();
    });
}

/// Runs `f` over `items` in one chunk per core (in order within a chunk, so each item's result
/// is the same however the work is shared).
fn in_chunks<T: Send>(items: &mut [T], threads: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let size = items.len().div_ceil(threads.max(1)).max(1);
    let mut chunks = items.chunks_mut(size).enumerate();
    let first = chunks.next();
    std::thread::scope(|scope| {
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * size, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

fn lost(reason: String) -> Error {
    Error::Model {
        path: "(training)".into(),
        reason,
    }
}

/// Rows held for boosting's validation loss: their labels, weights, bins and margins.
#[derive(Debug)]
pub(crate) struct HeldRows {
    rows: Rows,
    /// Per row: its margin under the trees so far.
    pub(crate) margins: Vec<f64>,
}

impl HeldRows {
    /// Reads the rows of `include`, each at margin `init`.
    pub(crate) async fn load(
        dataset: &BinnedDataset,
        include: Option<Expr>,
        weighted: bool,
        init: f64,
    ) -> Result<Self> {
        let rows = Rows::load(dataset, dataset.df.clone(), include, weighted, None).await?;
        let margins = vec![init; rows.class.len()];
        Ok(HeldRows { rows, margins })
    }

    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.rows.class.len()
    }

    /// Adds each row's leaf value in `tree` to its margin.
    pub(crate) fn add_tree(&mut self, tree: &TreeRoute) -> Result<()> {
        self.rows.add_tree(tree, 0, &mut self.margins)
    }

    /// Per row: its label (0 or 1), weight (1 without a weight column) and margin.
    pub(crate) fn each(&self) -> impl Iterator<Item = (u8, f64, f64)> + '_ {
        let weights = self.rows.weights.as_deref();
        self.rows
            .class
            .iter()
            .zip(&self.margins)
            .enumerate()
            .map(move |(r, (&y, &m))| (y, weights.map_or(1.0, |w| w[r]), m))
    }
}

impl Rows {
    /// Reads the rows of `include` from a binned table: label, weight, key hash and bins.
    async fn load(
        dataset: &BinnedDataset,
        mut df: DataFrame,
        include: Option<Expr>,
        weighted: bool,
        key: Option<Expr>,
    ) -> Result<Self> {
        if let Some(include) = include {
            df = df.filter(include)?;
        }
        let mut select: Vec<Expr> = vec![column(LABEL_COL)];
        if weighted {
            select.push(column(WEIGHT_COL));
        }
        let keyed = key.is_some();
        select.extend(key);
        let first_bin = select.len();
        select.extend(dataset.bin_exprs());
        let batches = df.select(select)?.collect().await?;
        Rows::from_batches(&batches, weighted, keyed, first_bin, dataset.num_bins())
    }

    /// Adds to the margins of rows `first..` the values of the leaves they reach in `tree`.
    fn add_tree(&self, tree: &TreeRoute, first: usize, margins: &mut [f64]) -> Result<()> {
        let leaves = LeafTable::new(tree, &self.num_bins)?;
        match &self.bins {
            BinColumns::Narrow(columns) => leaves.add(columns, first, margins),
            BinColumns::Wide(columns) => leaves.add(columns, first, margins),
        }
        Ok(())
    }

    fn from_batches(
        batches: &[RecordBatch],
        weighted: bool,
        keyed: bool,
        first_bin: usize,
        num_bins: Vec<u32>,
    ) -> Result<Self> {
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let features = batches
            .first()
            .map_or(0, |b| b.num_columns().saturating_sub(first_bin));
        let narrow = batches.iter().all(|b| {
            b.columns()[first_bin..]
                .iter()
                .all(|c| c.data_type() == &DataType::UInt8)
        });
        let mut class = Vec::with_capacity(n);
        let mut weights = weighted.then(|| Vec::with_capacity(n));
        let mut keys = keyed.then(|| Vec::with_capacity(n));
        let mut bins = if narrow {
            BinColumns::Narrow(vec![Vec::with_capacity(n); features])
        } else {
            BinColumns::Wide(vec![Vec::with_capacity(n); features])
        };
        for batch in batches {
            let label = cast(batch.column(0), &DataType::UInt8)?;
            class.extend(
                label
                    .as_primitive::<UInt8Type>()
                    .values()
                    .iter()
                    .map(|l| u8::from(*l != 0)),
            );
            let mut next = 1;
            if let Some(weights) = &mut weights {
                let w = cast(batch.column(next), &DataType::Float64)?;
                weights.extend_from_slice(w.as_primitive::<Float64Type>().values());
                next += 1;
            }
            if let Some(keys) = &mut keys {
                let k = cast(batch.column(next), &DataType::UInt64)?;
                keys.extend_from_slice(k.as_primitive::<UInt64Type>().values());
            }
            match &mut bins {
                BinColumns::Narrow(columns) => {
                    for (c, column) in columns.iter_mut().enumerate() {
                        let a = batch.column(first_bin + c).as_primitive::<UInt8Type>();
                        column.extend_from_slice(a.values());
                    }
                }
                BinColumns::Wide(columns) => {
                    for (c, column) in columns.iter_mut().enumerate() {
                        let a = cast(batch.column(first_bin + c), &DataType::UInt16)?;
                        column.extend_from_slice(a.as_primitive::<UInt16Type>().values());
                    }
                }
            }
        }
        check_bins(&bins, &num_bins)?;
        let fixed = weights.as_ref().map(|w| {
            w.iter()
                .map(|w| (w * WEIGHT_SCALE).round() as u64)
                .collect()
        });
        Ok(Rows {
            class,
            weights,
            fixed,
            keys,
            bins,
            num_bins,
        })
    }

    /// Adds a node's rows to its block: gradient sums when `gradients` are given, else class
    /// counts.
    fn accumulate(&self, w: &mut Work<'_>, gradients: Option<&(Vec<u64>, Vec<u64>)>) {
        match (&self.bins, gradients) {
            (BinColumns::Narrow(columns), Some((g, h))) => accumulate_gradients(columns, g, h, w),
            (BinColumns::Wide(columns), Some((g, h))) => accumulate_gradients(columns, g, h, w),
            (BinColumns::Narrow(columns), None) => self.accumulate_bins(columns, w),
            (BinColumns::Wide(columns), None) => self.accumulate_bins(columns, w),
        }
    }

    /// One feature at a time: a feature's column and the node's rows, in ascending order, are
    /// what the loop reads. (Reading row by row across the features, and counting into
    /// interleaved copies of the cells, both measured no faster.)
    fn accumulate_bins<B: Bin>(&self, columns: &[Vec<B>], w: &mut Work<'_>) {
        let class = self.class.as_slice();
        let block = &mut *w.block;
        match (&self.fixed, w.mult.is_empty()) {
            (None, true) => {
                for &(f, offset) in &w.offsets {
                    let column = columns[f].as_slice();
                    for &row in w.order {
                        let r = row as usize;
                        let bin: usize = column[r].into();
                        let cell = offset + bin * 2 + usize::from(class[r]);
                        block[cell] = block[cell].wrapping_add(1);
                    }
                }
            }
            (None, false) => {
                for &(f, offset) in &w.offsets {
                    let column = columns[f].as_slice();
                    for (&row, &k) in w.order.iter().zip(w.mult) {
                        let r = row as usize;
                        let bin: usize = column[r].into();
                        let cell = offset + bin * 2 + usize::from(class[r]);
                        block[cell] = block[cell].wrapping_add(u64::from(k));
                    }
                }
            }
            (Some(fixed), _) => {
                for &(f, offset) in &w.offsets {
                    let column = columns[f].as_slice();
                    for (i, &row) in w.order.iter().enumerate() {
                        let r = row as usize;
                        let k = w.mult.get(i).map_or(1, |k| u64::from(*k));
                        let bin: usize = column[r].into();
                        let cell = offset + bin * 4 + usize::from(class[r]);
                        block[cell] = block[cell].wrapping_add(k);
                        block[cell + 2] = block[cell + 2].wrapping_add(fixed[r].wrapping_mul(k));
                    }
                }
            }
        }
    }

    /// Moves the rows of `order` (and their multiplicities, when `mult` is not empty) that go
    /// left at a split before those that go right, each side in its order; returns how many go
    /// left.
    fn partition(
        &self,
        feature: usize,
        rule: &BinRule,
        order: &mut [u32],
        mult: &mut [u8],
        scratch: &mut Vec<(u32, u8)>,
    ) -> usize {
        let bins = self.num_bins.get(feature).copied().unwrap_or(0);
        let left: Vec<bool> = (0..bins)
            .map(|b| rule.goes_left(u16::try_from(b).unwrap_or(u16::MAX)))
            .collect();
        match &self.bins {
            BinColumns::Narrow(columns) => {
                partition(&columns[feature], &left, order, mult, scratch)
            }
            BinColumns::Wide(columns) => partition(&columns[feature], &left, order, mult, scratch),
        }
    }
}

/// [`Rows::partition`] by the bins of one feature.
fn partition<B: Bin>(
    column: &[B],
    left: &[bool],
    order: &mut [u32],
    mult: &mut [u8],
    scratch: &mut Vec<(u32, u8)>,
) -> usize {
    scratch.clear();
    let mut at = 0;
    for i in 0..order.len() {
        let row = order[i];
        let k = mult.get(i).copied().unwrap_or(1);
        let bin: usize = column[row as usize].into();
        if left[bin] {
            order[at] = row;
            if let Some(m) = mult.get_mut(at) {
                *m = k;
            }
            at += 1;
        } else {
            scratch.push((row, k));
        }
    }
    for (i, &(row, k)) in scratch.iter().enumerate() {
        order[at + i] = row;
        if let Some(m) = mult.get_mut(at + i) {
            *m = k;
        }
    }
    at
}

/// Rows, gradients and hessians of a node's rows, each counted with its multiplicity.
fn accumulate_gradients<B: Bin>(columns: &[Vec<B>], g: &[u64], h: &[u64], w: &mut Work<'_>) {
    // The node's terms are gathered once, in its row order, so that each feature's loop reads
    // them in sequence (LightGBM's ordered gradients).
    let terms: Vec<[u64; 3]> = w
        .order
        .iter()
        .enumerate()
        .map(|(i, &row)| {
            let r = row as usize;
            let k = w.mult.get(i).map_or(1, |k| u64::from(*k));
            [k, g[r].wrapping_mul(k), h[r].wrapping_mul(k)]
        })
        .collect();
    let block = &mut *w.block;
    for &(f, offset) in &w.offsets {
        let column = columns[f].as_slice();
        for (&row, term) in w.order.iter().zip(&terms) {
            let bin: usize = column[row as usize].into();
            let cell = offset + bin * 3;
            for (c, t) in block[cell..cell + 3].iter_mut().zip(term) {
                *c = c.wrapping_add(*t);
            }
        }
    }
}

/// A tree compiled for adding leaf values to margins: per node, the feature it splits on, its
/// children and where its "goes left" table over the feature's bins starts (leaves: their value).
struct LeafTable {
    nodes: Vec<LeafStep>,
    left: Vec<bool>,
}

enum LeafStep {
    Split {
        feature: usize,
        table: usize,
        children: [usize; 2],
    },
    Leaf(f64),
}

impl LeafTable {
    fn new(tree: &TreeRoute, num_bins: &[u32]) -> Result<Self> {
        let mut left = Vec::new();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for node in &tree.nodes {
            nodes.push(match node {
                RouteNode::Split {
                    feature,
                    rule,
                    left: l,
                    right: r,
                } => {
                    let bins = *num_bins
                        .get(*feature as usize)
                        .ok_or_else(|| lost(format!("a split names feature {feature}")))?;
                    let (l, r) = (*l as usize, *r as usize);
                    if l >= tree.nodes.len() || r >= tree.nodes.len() {
                        return Err(lost("a split names a node the tree does not have".into()));
                    }
                    let table = left.len();
                    left.extend(
                        (0..bins).map(|b| rule.goes_left(u16::try_from(b).unwrap_or(u16::MAX))),
                    );
                    LeafStep::Split {
                        feature: *feature as usize,
                        table,
                        children: [r, l],
                    }
                }
                RouteNode::Leaf { score } => LeafStep::Leaf(*score),
                RouteNode::Open { .. } => {
                    return Err(lost("a finished tree has an open node".into()));
                }
            });
        }
        Ok(LeafTable { nodes, left })
    }

    /// Adds to the margins of rows `first..` the values of their leaves.
    fn add<B: Bin>(&self, columns: &[Vec<B>], first: usize, margins: &mut [f64]) {
        for (i, margin) in margins.iter_mut().enumerate() {
            let r = first + i;
            let mut node = 0usize;
            // Children come after their parents in a route, so a walk ends within its length.
            for _ in 0..self.nodes.len() {
                match &self.nodes[node] {
                    LeafStep::Split {
                        feature,
                        table,
                        children,
                    } => {
                        let bin: usize = columns[*feature][r].into();
                        node = children[usize::from(self.left[table + bin])];
                    }
                    LeafStep::Leaf(value) => {
                        *margin += value;
                        break;
                    }
                }
            }
        }
    }
}

/// Checks that every bin is within its feature's range, so that passes can index by bin.
fn check_bins(bins: &BinColumns, num_bins: &[u32]) -> Result<()> {
    fn past<B: Bin>(columns: &[Vec<B>], bins: &[u32]) -> Option<usize> {
        columns
            .iter()
            .zip(bins)
            .position(|(column, &count)| count == 0 || B::any_past(column, count as usize - 1))
    }
    let bad = match bins {
        BinColumns::Narrow(columns) => past(columns, num_bins),
        BinColumns::Wide(columns) => past(columns, num_bins),
    };
    match bad {
        Some(f) => Err(Error::FunctionArgument {
            function: crate::histogram::HISTOGRAM_UDAF,
            reason: format!(
                "a bin of feature {f} is outside its {} bins (binned with other edges?)",
                num_bins[f]
            ),
        }),
        None => Ok(()),
    }
}

impl TreeRows {
    /// Draws the tree's sample: every row with its multiplicity, rows drawn 0 times left out.
    fn start(&mut self, rows: &Rows, sampling: Option<&Sampling>, seed: u64, n: usize) {
        self.started = true;
        match (sampling, &rows.keys) {
            (Some(s), Some(keys)) => {
                for (r, &key) in keys.iter().enumerate() {
                    let k = s.multiplicity(key, seed);
                    if k > 0 {
                        self.order.push(r as u32);
                        // Poisson multiplicities past 255 have probability far below 2⁻⁶⁴.
                        self.mult.push(u8::try_from(k).unwrap_or(u8::MAX));
                    }
                }
            }
            _ => self.order.extend(0..n as u32),
        }
        self.ranges.push(Some((0, self.order.len() as u32)));
    }

    /// Makes node `node`'s range known, splitting its ancestors' ranges as needed.
    fn ensure<S>(&mut self, node: usize, nodes: &[GrowNode<S>], rows: &Rows) -> Result<()> {
        if self.ranges[node].is_some() {
            return Ok(());
        }
        let parent = nodes[node]
            .parent
            .ok_or_else(|| lost(format!("node {} has no parent", nodes[node].id)))?;
        self.ensure(parent, nodes, rows)?;
        let p = &nodes[parent];
        let (Some(split), Some((l, r))) = (&p.split, p.children) else {
            return Err(lost(format!("node {} is not split", p.id)));
        };
        let Some((start, end)) = self.ranges[parent] else {
            return Err(lost(format!("node {} has no rows", p.id)));
        };
        let (start, end) = (start as usize, end as usize);
        let mult = if self.mult.is_empty() {
            &mut [][..]
        } else {
            &mut self.mult[start..end]
        };
        let lefts = rows.partition(
            split.feature,
            &split.rule,
            &mut self.order[start..end],
            mult,
            &mut self.scratch,
        );
        let mid = (start + lefts) as u32;
        self.ranges[l] = Some((start as u32, mid));
        self.ranges[r] = Some((mid, end as u32));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_keeps_each_side_in_order_with_its_multiplicities() {
        let column: Vec<u8> = vec![2, 1, 2, 1, 1, 3];
        let left = [false, true, false, false];
        let mut order: Vec<u32> = vec![0, 1, 2, 3, 4, 5];
        let mut mult: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
        let mut scratch = Vec::new();
        let at = partition(&column, &left, &mut order, &mut mult, &mut scratch);
        assert_eq!(at, 3);
        assert_eq!(order, [1, 3, 4, 0, 2, 5]);
        assert_eq!(mult, [2, 4, 5, 1, 3, 6]);
        let mut once: Vec<u32> = vec![5, 4, 3];
        assert_eq!(
            partition(&column, &left, &mut once, &mut [], &mut scratch),
            2
        );
        assert_eq!(once, [4, 3, 5]);
    }
}
