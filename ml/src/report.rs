//! Training artifacts on disk: the model (canonical JSON), `metrics.json`, the readable trees,
//! the Graphviz DOT file (decision trees), the ROC curve and the reliability diagram as SVG, and
//! the feature importances (impurity and mean absolute contribution). This module only renders
//! and writes what a [`TrainingReport`] holds; it computes no statistics of its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::calibration::{CalibrationReport, OperatingPoint, ThresholdMetrics, reliability_svg};
use crate::ensemble::EarlyStopping;
use crate::error::{Error, Result};
use crate::evaluate::TrainingReport;
use crate::fitted::{Model, ParamsRef};
use crate::metrics::{BinaryMetrics, CrossValidation, RocPoint};
use crate::model::format_number;

/// File names inside a model directory.
pub mod files {
    /// The model, canonical JSON.
    pub const MODEL: &str = "model.json";
    /// Metrics of the run.
    pub const METRICS: &str = "metrics.json";
    /// The trees as text.
    pub const TREE_TEXT: &str = "tree.txt";
    /// The tree in Graphviz DOT (decision trees).
    pub const TREE_DOT: &str = "tree.dot";
    /// The ROC curve.
    pub const ROC_SVG: &str = "roc.svg";
    /// The reliability diagram.
    pub const RELIABILITY_SVG: &str = "reliability.svg";
    /// Feature importances.
    pub const IMPORTANCES: &str = "feature_importances.json";
}

/// One feature's importance.
#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    /// Feature name.
    pub feature: String,
    /// Share of the split gains (MLlib's impurity importance).
    pub importance: f64,
    /// Share of the mean absolute TreeSHAP contribution over the explained test rows.
    pub mean_abs_contribution: f64,
}

/// What `metrics.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsFile<'a> {
    /// SHA-256 of the canonical model bytes.
    pub model_sha256: String,
    /// `decision_tree`, `random_forest` or `gbt`.
    pub model: &'static str,
    /// The parameters.
    pub params: ParamsRef<'a>,
    /// Rows in the dataset, in training and in the test split.
    pub rows: u64,
    /// Training rows.
    pub train_rows: u64,
    /// Training rows held out for calibration and the operating threshold.
    pub holdout_rows: u64,
    /// Test rows.
    pub test_rows: u64,
    /// Trees of the model.
    pub trees: usize,
    /// Depth of the deepest tree.
    pub depth: u32,
    /// Nodes of all trees.
    pub nodes: usize,
    /// Passes over the data to train the final model.
    pub passes: u32,
    /// Boosting's early stopping.
    pub early_stopping: Option<&'a EarlyStopping>,
    /// Final model on the test rows at probability 0.5.
    pub test: Option<&'a BinaryMetrics>,
    /// The operating threshold and the rule that chose it.
    pub operating_point: Option<&'a OperatingPoint>,
    /// Final model on the test rows at the operating threshold.
    pub test_at_threshold: Option<&'a ThresholdMetrics>,
    /// The always-negative baseline on the test rows.
    pub baseline_always_negative: Option<&'a BinaryMetrics>,
    /// Brier scores and reliability curves on the test rows.
    pub calibration: Option<&'a CalibrationReport>,
    /// Cross-validation on the training rows.
    pub cross_validation: Option<&'a CrossValidation>,
    /// Test rows the mean absolute contributions are averaged over.
    pub explained_rows: u64,
}

impl TrainingReport {
    /// Feature importances, most important first (ties by feature order).
    pub fn importances(&self) -> Vec<Importance> {
        let mut out: Vec<Importance> = self
            .model
            .features()
            .iter()
            .zip(self.model.feature_importances())
            .zip(&self.mean_abs_contributions)
            .map(|((f, importance), shap)| Importance {
                feature: f.name.clone(),
                importance,
                mean_abs_contribution: *shap,
            })
            .collect();
        out.sort_by(|a, b| b.importance.total_cmp(&a.importance));
        out
    }

    /// The content of `metrics.json`.
    pub fn metrics_file(&self) -> Result<MetricsFile<'_>> {
        let model = &self.model;
        Ok(MetricsFile {
            model_sha256: model.sha256_hex()?,
            model: model.kind(),
            params: model.params(),
            rows: self.rows,
            train_rows: self.train_rows,
            holdout_rows: self.holdout_rows,
            test_rows: self.test_rows,
            trees: model.num_trees(),
            depth: model.depth(),
            nodes: model.num_nodes(),
            passes: model.passes(),
            early_stopping: match model {
                Model::Gbt(m) => m.early_stopping.as_ref(),
                _ => None,
            },
            test: self.test.as_ref(),
            operating_point: model.operating_point(),
            test_at_threshold: self.test_at_threshold.as_ref(),
            baseline_always_negative: self.baseline.as_ref(),
            calibration: self.calibration.as_ref(),
            cross_validation: self.cross_validation.as_ref(),
            explained_rows: self.explained_rows,
        })
    }

    /// Every artifact of a model directory, by file name: the model, its metrics, the readable
    /// trees, a decision tree's Graphviz DOT, the ROC curve, the reliability curve (when the model
    /// is calibrated) and the importances. Where they are written is the
    /// caller's business (a local directory, an object store).
    pub fn artifacts(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let auc = self.test.as_ref().and_then(|m| m.roc_auc);
        let mut outputs: Vec<(&'static str, Vec<u8>)> = vec![
            (files::MODEL, self.model.to_canonical_json()?),
            (
                files::METRICS,
                serde_json::to_vec_pretty(&self.metrics_file()?)?,
            ),
            (files::TREE_TEXT, self.model.to_debug_string().into_bytes()),
            (files::ROC_SVG, roc_svg(&self.roc, auc).into_bytes()),
            (
                files::IMPORTANCES,
                serde_json::to_vec_pretty(&self.importances())?,
            ),
        ];
        if let Some(dot) = self.model.to_dot() {
            outputs.push((files::TREE_DOT, dot.into_bytes()));
        }
        if let Some(calibration) = &self.calibration {
            outputs.push((
                files::RELIABILITY_SVG,
                reliability_svg(calibration).into_bytes(),
            ));
        }
        Ok(outputs)
    }

    /// Writes every artifact into `dir` (created if needed); returns the paths written.
    pub fn write_artifacts(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create directory",
            path: dir.display().to_string(),
            source,
        })?;
        let mut written = Vec::new();
        for (name, bytes) in self.artifacts()? {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|source| Error::Io {
                action: "write",
                path: path.display().to_string(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The ROC curve as a standalone SVG image.
pub fn roc_svg(points: &[RocPoint], auc: Option<f64>) -> String {
    let (x, y) = (UnitChart::x, UnitChart::y);
    let mut chart = UnitChart::new();
    // At most 2,000 points: thin a long curve evenly, keeping both ends.
    let step = points.len().div_ceil(2000).max(1);
    let mut path = String::new();
    for (i, p) in points.iter().enumerate() {
        if i % step == 0 || i + 1 == points.len() {
            let _ = write!(path, "{:.2},{:.2} ", x(p.fpr), y(p.tpr));
        }
    }
    let _ = writeln!(
        chart.svg,
        r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
        path.trim_end()
    );
    let title = match auc {
        Some(a) => format!("ROC curve (test rows), AUC = {}", format_number(a)),
        None => "ROC curve (no test rows with both classes)".to_string(),
    };
    chart.finish(&title, "false positive rate", "true positive rate")
}

/// An SVG chart of two quantities that run from 0 to 1: a square frame with ticks at quarters and
/// the dashed diagonal (chance for a ROC curve, perfect calibration for a reliability curve).
/// The curves are written into `svg` between [`UnitChart::new`] and [`UnitChart::finish`].
pub(crate) struct UnitChart {
    pub(crate) svg: String,
}

impl UnitChart {
    /// The side of the plotting square, in SVG units.
    const SIZE: f64 = 400.0;
    /// The space around it for ticks, labels and the title.
    pub(crate) const MARGIN: f64 = 50.0;
    const TOTAL: f64 = Self::SIZE + 2.0 * Self::MARGIN;

    /// Where `v` falls across.
    pub(crate) fn x(v: f64) -> f64 {
        Self::MARGIN + v * Self::SIZE
    }

    /// Where `v` falls up (SVG's y runs down).
    pub(crate) fn y(v: f64) -> f64 {
        Self::MARGIN + (1.0 - v) * Self::SIZE
    }

    /// The document, the frame, the ticks and the diagonal.
    pub(crate) fn new() -> Self {
        let (x, y, total) = (Self::x, Self::y, Self::TOTAL);
        let (size, margin) = (Self::SIZE, Self::MARGIN);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{total}" viewBox="0 0 {total} {total}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r##"<rect x="{margin}" y="{margin}" width="{size}" height="{size}" fill="none" stroke="#333"/>"##
        );
        for i in 0..=4 {
            let v = f64::from(i) / 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{v}</text>"#,
                x(v),
                y(0.0) + 18.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{v}</text>"#,
                x(0.0) - 6.0,
                y(v) + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 4"/>"##,
            x(0.0),
            y(0.0),
            x(1.0),
            y(1.0)
        );
        Self { svg }
    }

    /// The title, the axis labels and the document's end.
    pub(crate) fn finish(mut self, title: &str, x_label: &str, y_label: &str) -> String {
        let total = Self::TOTAL;
        let _ = writeln!(
            self.svg,
            r#"<text x="{}" y="30" text-anchor="middle" font-size="15">{title}</text>"#,
            total / 2.0
        );
        let _ = writeln!(
            self.svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
            total / 2.0,
            total - 12.0
        );
        let _ = writeln!(
            self.svg,
            r#"<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{y_label}</text>"#,
            total / 2.0,
            total / 2.0
        );
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_the_curve_and_the_auc() {
        let points = [
            RocPoint {
                fpr: 0.0,
                tpr: 0.0,
                threshold: f64::INFINITY,
            },
            RocPoint {
                fpr: 0.1,
                tpr: 0.7,
                threshold: 0.8,
            },
            RocPoint {
                fpr: 1.0,
                tpr: 1.0,
                threshold: 0.0,
            },
        ];
        let svg = roc_svg(&points, Some(0.81));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("AUC = 0.81"), "{svg}");
        assert!(
            svg.contains("polyline points=\"50.00,450.00 90.00,170.00 450.00,50.00\""),
            "{svg}"
        );
    }
}
