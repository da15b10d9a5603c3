//! Split candidates and bins. Continuous features get their candidate thresholds from a
//! weighted quantile sketch over a hash-selected sample (MLlib's `findSplits` recipe: at most
//! `max_bins` bins, midpoints between distinct values, all of them when there are few enough);
//! categorical features get one bin per category. Every feature gets one extra bin, bin 0, for
//! missing values (null or NaN). The `ml_bin` UDF maps a value to its bin inside a plan; its edges
//! travel as a literal argument, so the same plan bins identically on any executor. This module
//! does not build trees.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt16Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, lit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name `ml_bin` is registered under.
pub const BIN_UDF: &str = "ml_bin";

/// The bin reserved for missing values.
pub const MISSING_BIN: u16 = 0;

/// How one feature is binned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FeatureBins {
    /// Value bin `k` (stored as `k + 1`) holds the values with exactly `k` edges below them, so
    /// `bin ≤ k + 1` is `value ≤ edges[k]`.
    Continuous {
        /// Strictly increasing candidate thresholds.
        #[serde(with = "crate::exact::vec")]
        edges: Vec<f64>,
    },
    /// Category `c` is stored as bin `c + 1`.
    Categorical {
        /// Number of categories.
        categories: u32,
    },
}

impl FeatureBins {
    /// Bins of this feature, the missing bin included.
    pub fn num_bins(&self) -> usize {
        match self {
            FeatureBins::Continuous { edges } => edges.len() + 2,
            FeatureBins::Categorical { categories } => *categories as usize + 1,
        }
    }

    /// The bin of a continuous value.
    pub fn continuous_bin(edges: &[f64], value: f64) -> u16 {
        if value.is_nan() {
            return MISSING_BIN;
        }
        (edges.partition_point(|e| *e < value) + 1) as u16
    }
}

/// Finds continuous bins faster than a binary search, with the same result. A grid of equal
/// cells over the range of the edges maps a value to a cell by one multiplication; that map
/// never decreases, so every edge in an earlier cell is below the value and every edge in a
/// later cell above it. Only the edges that map to the value's own cell need a comparison, and
/// the grid is fine enough that most cells hold at most one.
struct EdgeFinder<'a> {
    edges: &'a [f64],
    low: f64,
    scale: f64,
    /// The last cell.
    last: usize,
    /// Per cell: the edges in earlier cells, and [`EdgeFinder::CROWDED`] when the cell holds
    /// more than one edge (empty when there is no grid).
    cells: Vec<u32>,
}

impl<'a> EdgeFinder<'a> {
    /// Cells per edge.
    const CELLS_PER_EDGE: usize = 16;

    /// Marks a cell that holds several edges.
    const CROWDED: u32 = 1 << 31;

    fn new(edges: &'a [f64]) -> Self {
        let (low, high) = match (edges.first(), edges.last()) {
            (Some(&low), Some(&high)) => (low, high),
            _ => (0.0, 0.0),
        };
        let count = (edges.len() * Self::CELLS_PER_EDGE).min(1 << 20);
        let scale = count as f64 / (high - low);
        let mut finder = EdgeFinder {
            edges,
            low,
            scale,
            last: count.max(1) - 1,
            cells: Vec::new(),
        };
        // A grid needs a finite, non-empty range; a search over few edges is quick anyway.
        if edges.len() >= 4 && scale.is_finite() && scale > 0.0 {
            let mut cells = vec![0u32; count];
            let mut in_cell = vec![0u32; count];
            for e in edges {
                in_cell[finder.cell(*e)] += 1;
            }
            let mut below = 0u32;
            for (cell, n) in cells.iter_mut().zip(&in_cell) {
                *cell = below | if *n > 1 { Self::CROWDED } else { 0 };
                below += n;
            }
            finder.cells = cells;
        }
        finder
    }

    /// The cell of a value that is not NaN (values outside the range land in the end cells).
    #[inline]
    fn cell(&self, value: f64) -> usize {
        (((value - self.low) * self.scale) as usize).min(self.last)
    }

    /// The bin of `value`.
    #[inline]
    fn bin(&self, value: f64) -> u16 {
        if value.is_nan() {
            return MISSING_BIN;
        }
        if self.cells.is_empty() {
            return FeatureBins::continuous_bin(self.edges, value);
        }
        let cell = self.cells[self.cell(value)];
        if cell & Self::CROWDED != 0 {
            return FeatureBins::continuous_bin(self.edges, value);
        }
        // The cell's edge if it has one, else the first edge of a later cell (above the value).
        let below = cell as usize;
        let next_below = self.edges.get(below).is_some_and(|e| *e < value);
        (below + usize::from(next_below) + 1) as u16
    }
}

/// The spec `ml_bin` receives as its literal argument: the column (for error messages) and its
/// bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BinArg {
    column: String,
    bins: FeatureBins,
}

/// Candidate thresholds from weighted values: midpoints between adjacent distinct values, all of
/// them when there are at most `max_bins` distinct values, otherwise `max_bins - 1` chosen at
/// equal steps of cumulative weight. The input order does not matter: values are sorted (ties by
/// weight) before their weights are summed, so the result is the same for any permutation.
pub fn candidate_edges(mut values: Vec<(f64, f64)>, max_bins: usize) -> Vec<f64> {
    values.retain(|(v, w)| v.is_finite() && *w > 0.0);
    values.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut distinct: Vec<(f64, f64)> = Vec::new();
    for (v, w) in values {
        match distinct.last_mut() {
            Some((last, sum)) if *last == v => *sum += w,
            _ => distinct.push((v, w)),
        }
    }
    if distinct.len() <= 1 {
        return Vec::new();
    }
    let midpoint = |i: usize| (distinct[i].0 + distinct[i + 1].0) / 2.0;
    if distinct.len() <= max_bins {
        return (0..distinct.len() - 1).map(midpoint).collect();
    }
    // MLlib's walk: emit a threshold when the cumulative weight passes the next target, at the
    // distinct value whose cumulative weight is closest to it.
    let total: f64 = distinct.iter().map(|(_, w)| w).sum();
    let stride = total / max_bins as f64;
    let mut edges = Vec::with_capacity(max_bins - 1);
    let mut target = stride;
    let mut cumulative = 0.0;
    for (i, &(_, weight)) in distinct.iter().enumerate().take(distinct.len() - 1) {
        let before = cumulative;
        cumulative += weight;
        if cumulative >= target {
            // Closer to the target after this value, or before it (then the previous value).
            let pick = if (before - target).abs() < (cumulative - target).abs() && i > 0 {
                i - 1
            } else {
                i
            };
            let edge = midpoint(pick);
            if edges.last().is_none_or(|last| *last < edge) {
                edges.push(edge);
            }
            while target <= cumulative {
                target += stride;
            }
            if edges.len() == max_bins - 1 {
                break;
            }
        }
    }
    edges
}

/// `ml_bin(value, spec Utf8) -> UInt16`: the bin of each value under the literal bin spec.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BinUdf {
    signature: Signature,
}

impl Default for BinUdf {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl BinUdf {
    /// The UDF, ready to register.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::default())
    }
}

fn bin_array(arg: &BinArg, values: &ArrayRef) -> Result<UInt16Array> {
    match &arg.bins {
        FeatureBins::Continuous { edges } => {
            let values = cast(values, &DataType::Float64)?;
            let values = values.as_primitive::<Float64Type>();
            let finder = EdgeFinder::new(edges);
            let mut bins: Vec<u16> = values.values().iter().map(|v| finder.bin(*v)).collect();
            if let Some(nulls) = values.nulls().filter(|n| n.null_count() > 0) {
                for (bin, valid) in bins.iter_mut().zip(nulls.iter()) {
                    if !valid {
                        *bin = MISSING_BIN;
                    }
                }
            }
            Ok(UInt16Array::from(bins))
        }
        FeatureBins::Categorical { categories } => {
            let values = cast(values, &DataType::Int64)?;
            let values = values.as_primitive::<Int64Type>();
            let mut out = Vec::with_capacity(values.len());
            for v in values.iter() {
                out.push(match v {
                    None => MISSING_BIN,
                    Some(c) if (0..i64::from(*categories)).contains(&c) => (c + 1) as u16,
                    Some(c) => {
                        return Err(Error::CategoryOutOfRange {
                            column: arg.column.clone(),
                            value: c,
                            categories: *categories,
                        });
                    }
                });
            }
            Ok(UInt16Array::from(out))
        }
    }
}

impl ScalarUDFImpl for BinUdf {
    fn name(&self) -> &str {
        BIN_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt16)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let bad = |reason: &str| {
            Error::FunctionArgument {
                function: "ml_bin",
                reason: reason.to_string(),
            }
            .into_datafusion()
        };
        let [value, spec] = <[ColumnarValue; 2]>::try_from(args.args)
            .map_err(|_| bad("expects (value, spec literal)"))?;
        let spec = match spec {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s,
            _ => return Err(bad("the second argument must be a Utf8 bin spec literal")),
        };
        let arg: BinArg = serde_json::from_str(&spec).map_err(|e| bad(&e.to_string()))?;
        let values = value.into_array(rows)?;
        let bins = bin_array(&arg, &values).map_err(Error::into_datafusion)?;
        Ok(ColumnarValue::Array(Arc::new(bins)))
    }
}

/// `ml_bin(column, spec)` as an expression.
pub(crate) fn bin_expr(value: Expr, column: &str, bins: &FeatureBins) -> Result<Expr> {
    let arg = BinArg {
        column: column.to_string(),
        bins: bins.clone(),
    };
    Ok(BinUdf::udf().call(vec![value, lit(serde_json::to_string(&arg)?)]))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int32Array};

    use super::*;

    #[test]
    fn few_distinct_values_give_all_midpoints() {
        let values = vec![(3.0, 1.0), (1.0, 1.0), (2.0, 1.0), (2.0, 5.0), (1.0, 1.0)];
        assert_eq!(candidate_edges(values, 32), vec![1.5, 2.5]);
    }

    #[test]
    fn many_values_give_at_most_max_bins_bins_at_equal_weight() {
        let values: Vec<_> = (0..1000).map(|i| (f64::from(i), 1.0)).collect();
        let edges = candidate_edges(values, 4);
        assert_eq!(edges.len(), 3);
        for (edge, expected) in edges.iter().zip([249.5, 499.5, 749.5]) {
            assert!((edge - expected).abs() <= 1.0, "{edges:?}");
        }
    }

    #[test]
    fn weights_move_the_quantiles() {
        // Value 0 carries half of the weight: the first edge sits right after it.
        let mut values: Vec<_> = (1..=100).map(|i| (f64::from(i), 1.0)).collect();
        values.push((0.0, 100.0));
        let edges = candidate_edges(values, 4);
        assert_eq!(edges[0], 0.5, "{edges:?}");
    }

    #[test]
    fn order_does_not_matter() {
        let mut values: Vec<_> = (0..500)
            .map(|i| (f64::from(i % 97) * 0.37, 1.0 + f64::from(i % 3)))
            .collect();
        let a = candidate_edges(values.clone(), 16);
        values.reverse();
        assert_eq!(a, candidate_edges(values, 16));
    }

    #[test]
    fn bins_match_thresholds() {
        let edges = [1.5, 2.5];
        assert_eq!(FeatureBins::continuous_bin(&edges, 1.0), 1);
        assert_eq!(FeatureBins::continuous_bin(&edges, 1.5), 1);
        assert_eq!(FeatureBins::continuous_bin(&edges, 2.0), 2);
        assert_eq!(FeatureBins::continuous_bin(&edges, 9.0), 3);
        assert_eq!(FeatureBins::continuous_bin(&edges, f64::NAN), MISSING_BIN);
        let arg = BinArg {
            column: "x".into(),
            bins: FeatureBins::Continuous {
                edges: edges.to_vec(),
            },
        };
        let values: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)]));
        assert_eq!(
            bin_array(&arg, &values).unwrap().values().to_vec(),
            vec![1, 0, 3]
        );
    }

    #[test]
    fn the_grid_finds_the_same_bins_as_a_binary_search() {
        // Evenly spread edges (the grid decides), skewed ones (crowded cells fall back to the
        // search), and a huge range.
        let even: Vec<f64> = (0..31)
            .map(|i| f64::from(i) * 1.7 + f64::from(i % 3) * 0.1)
            .collect();
        let mut skewed: Vec<f64> = (0..24).map(|i| 1.0 + f64::from(i) * 1e-3).collect();
        skewed.extend([2.0, 3.5, 10.0, 1e6]);
        let huge = vec![-1e300, -1.0, 0.0, 1.0, 1e300];
        for edges in [even, skewed, huge] {
            let finder = EdgeFinder::new(&edges);
            assert!(!finder.cells.is_empty());
            let mut values = edges.clone();
            values.extend(edges.iter().map(|e| e + 1e-9));
            values.extend(edges.iter().map(|e| e - 1e-9));
            values.extend(edges.iter().map(|e| e.next_up()));
            values.extend(edges.iter().map(|e| e.next_down()));
            values.extend((0..5000).map(|i| -5.0 + f64::from(i) * 0.013));
            values.extend([f64::NEG_INFINITY, f64::INFINITY, -0.0, f64::MAX, f64::MIN]);
            for v in values {
                assert_eq!(
                    finder.bin(v),
                    FeatureBins::continuous_bin(&edges, v),
                    "value {v} with edges {edges:?}"
                );
            }
            assert_eq!(finder.bin(f64::NAN), MISSING_BIN);
        }
    }

    #[test]
    fn categories_out_of_range_are_named() {
        let arg = BinArg {
            column: "smoking".into(),
            bins: FeatureBins::Categorical { categories: 3 },
        };
        let ok: ArrayRef = Arc::new(Int32Array::from(vec![Some(0), None, Some(2)]));
        assert_eq!(
            bin_array(&arg, &ok).unwrap().values().to_vec(),
            vec![1, 0, 3]
        );
        let bad: ArrayRef = Arc::new(Int32Array::from(vec![3]));
        let err = bin_array(&arg, &bad).unwrap_err();
        assert!(
            matches!(err, Error::CategoryOutOfRange { value: 3, .. }),
            "{err}"
        );
    }
}
