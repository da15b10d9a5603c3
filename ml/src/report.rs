//! Training artifacts on disk: the model (canonical JSON), `metrics.json`, the readable tree,
//! the Graphviz DOT file, the ROC curve as SVG and the feature importances. This module only
//! renders and writes what a [`TrainingReport`] holds; it computes no statistics of its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::evaluate::TrainingReport;
use crate::metrics::{BinaryMetrics, CrossValidation, RocPoint};
use crate::model::format_number;
use crate::params::DecisionTreeParams;

/// File names inside a model directory.
pub mod files {
    /// The model, canonical JSON.
    pub const MODEL: &str = "model.json";
    /// Metrics of the run.
    pub const METRICS: &str = "metrics.json";
    /// The tree as text.
    pub const TREE_TEXT: &str = "tree.txt";
    /// The tree in Graphviz DOT.
    pub const TREE_DOT: &str = "tree.dot";
    /// The ROC curve.
    pub const ROC_SVG: &str = "roc.svg";
    /// Feature importances.
    pub const IMPORTANCES: &str = "feature_importances.json";
}

/// One feature's importance.
#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    /// Feature name.
    pub feature: String,
    /// Share of the total importance.
    pub importance: f64,
}

/// What `metrics.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsFile<'a> {
    /// SHA-256 of the canonical model bytes.
    pub model_sha256: String,
    /// The parameters.
    pub params: &'a DecisionTreeParams,
    /// Rows in the dataset, in training and in the test split.
    pub rows: u64,
    /// Training rows.
    pub train_rows: u64,
    /// Test rows.
    pub test_rows: u64,
    /// Depth and node count of the model.
    pub depth: u32,
    /// Number of nodes.
    pub nodes: usize,
    /// Passes over the data to train the final model.
    pub passes: u32,
    /// Final model on the test rows.
    pub test: Option<&'a BinaryMetrics>,
    /// The always-negative baseline on the test rows.
    pub baseline_always_negative: Option<&'a BinaryMetrics>,
    /// Cross-validation on the training rows.
    pub cross_validation: Option<&'a CrossValidation>,
}

impl TrainingReport {
    /// Feature importances, most important first (ties by feature order).
    pub fn importances(&self) -> Vec<Importance> {
        let mut out: Vec<Importance> = self
            .model
            .features
            .iter()
            .zip(self.model.feature_importances())
            .map(|(f, importance)| Importance {
                feature: f.name.clone(),
                importance,
            })
            .collect();
        out.sort_by(|a, b| b.importance.total_cmp(&a.importance));
        out
    }

    /// The content of `metrics.json`.
    pub fn metrics_file(&self) -> Result<MetricsFile<'_>> {
        Ok(MetricsFile {
            model_sha256: self.model.sha256_hex()?,
            params: &self.model.params,
            rows: self.rows,
            train_rows: self.train_rows,
            test_rows: self.test_rows,
            depth: self.model.depth(),
            nodes: self.model.num_nodes(),
            passes: self.model.training.passes,
            test: self.test.as_ref(),
            baseline_always_negative: self.baseline.as_ref(),
            cross_validation: self.cross_validation.as_ref(),
        })
    }

    /// Every artifact of a model directory, by file name: the model, its metrics, the readable
    /// tree, its Graphviz DOT, the ROC curve and the importances. Where they are written is the
    /// caller's business (a local directory, an object store).
    pub fn artifacts(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let auc = self.test.as_ref().and_then(|m| m.roc_auc);
        Ok(vec![
            (files::MODEL, self.model.to_canonical_json()?),
            (
                files::METRICS,
                serde_json::to_vec_pretty(&self.metrics_file()?)?,
            ),
            (files::TREE_TEXT, self.model.to_debug_string().into_bytes()),
            (files::TREE_DOT, self.model.to_dot().into_bytes()),
            (files::ROC_SVG, roc_svg(&self.roc, auc).into_bytes()),
            (
                files::IMPORTANCES,
                serde_json::to_vec_pretty(&self.importances())?,
            ),
        ])
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
    const SIZE: f64 = 400.0;
    const MARGIN: f64 = 50.0;
    let x = |v: f64| MARGIN + v * SIZE;
    let y = |v: f64| MARGIN + (1.0 - v) * SIZE;
    let mut svg = String::new();
    let total = SIZE + 2.0 * MARGIN;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{total}" viewBox="0 0 {total} {total}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN}" y="{MARGIN}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#333"/>"##
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
    // At most 2,000 points: thin a long curve evenly, keeping both ends.
    let step = points.len().div_ceil(2000).max(1);
    let mut path = String::new();
    for (i, p) in points.iter().enumerate() {
        if i % step == 0 || i + 1 == points.len() {
            let _ = write!(path, "{:.2},{:.2} ", x(p.fpr), y(p.tpr));
        }
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
        path.trim_end()
    );
    let title = match auc {
        Some(a) => format!("ROC curve (test rows), AUC = {}", format_number(a)),
        None => "ROC curve (no test rows with both classes)".to_string(),
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="15">{title}</text>"#,
        total / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">false positive rate</text>"#,
        total / 2.0,
        total - 12.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">true positive rate</text>"#,
        total / 2.0,
        total / 2.0
    );
    svg.push_str("</svg>\n");
    svg
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
