//! The plans a run hands DataFusion, as the optimizer leaves them (with every column's type and
//! nullability), for the two example jobs: pass 1's aggregate over the tagged rows (grouped by
//! drop reason, and over rows held in memory), the join key check, and pass 2's output rows
//! (from the inputs, and from rows held in memory). How the stages build their pieces may
//! change; what reaches the engine may not without a reviewed snapshot, because the published
//! bytes and the run's speed follow from it.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionContext};

use super::*;
use crate::generate::{GenerateConfig, OutputFormat, generate};
use crate::manifest::{Encoding, Normalizer};

fn or_panic<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

async fn optimized_sql(ctx: &SessionContext, sql: &str) -> String {
    optimized(or_panic(ctx.sql(sql).await))
}

fn optimized(df: DataFrame) -> String {
    or_panic(df.into_optimized_plan())
        .display_indent_schema()
        .to_string()
}

/// Statistics as pass 1 could have fitted them: a range for min-max, a mean and deviation for
/// z-score, a constant column (no spread), and categories that need quoting.
fn fitted(job: &Job) -> Fit {
    let mut fit = Fit::default();
    for c in &job.normalize.minmax {
        fit.normalizers.insert(
            c.clone(),
            Normalizer::MinMax {
                min: 40.25,
                max: 600.0,
            },
        );
    }
    for (i, c) in job.normalize.zscore.iter().enumerate() {
        let std = if i == 1 { 0.0 } else { 0.1 + i as f64 };
        fit.normalizers.insert(
            c.clone(),
            Normalizer::ZScore {
                mean: 1.0 / 3.0,
                std,
            },
        );
    }
    for c in &job.encode.columns {
        fit.encodings.insert(
            c.clone(),
            Encoding {
                values: vec!["O'Brien".into(), "a".into(), "b".into()],
            },
        );
    }
    fit
}

/// Builds the job's plans over `inputs` (name -> path) and returns each, optimized, by name.
async fn plans(job: &Job, inputs: &[(&str, &std::path::Path)]) -> Vec<(&'static str, String)> {
    let mut ctx = SessionContext::new();
    or_panic(crate::functions::register_functions(&mut ctx));
    let overrides = inputs
        .iter()
        .map(|(name, path)| (name.to_string(), path.display().to_string()))
        .collect();
    let registered = or_panic(inputs::register_inputs(job, &overrides, &ctx).await);
    let plan = or_panic(Plan::build(job, &registered));
    or_panic(plan.register(&ctx, job).await);
    let tagged: SchemaRef = Arc::new(
        or_panic(ctx.table(TAGGED_TABLE).await)
            .schema()
            .as_arrow()
            .clone(),
    );
    let empty = or_panic(MemTable::try_new(tagged, vec![Vec::new()]));
    or_panic(ctx.register_table(KEPT_TABLE, Arc::new(empty)));
    let fit = fitted(job);
    let text = text_type(&ctx);
    let pass2 = |held: bool| {
        let (ctx, plan, fit, text) = (&ctx, &plan, &fit, &text);
        async move {
            let kept = or_panic(plan.kept_rows(ctx, held).await);
            optimized(or_panic(output::project(kept, &plan.columns, fit, text)))
        }
    };
    let mut out = vec![
        (
            "pass 1 grouped by reason",
            optimized_sql(&ctx, &fit::fit_sql(job, false)).await,
        ),
        (
            "pass 1 over held rows",
            optimized_sql(&ctx, &fit::fit_sql(job, true)).await,
        ),
        ("pass 2 from the inputs", pass2(false).await),
        ("pass 2 from held rows", pass2(true).await),
    ];
    for join in &job.join {
        let sql = join::key_check_sql(&registered[&join.right].table, &join.on);
        out.push(("join key check", optimized_sql(&ctx, &sql).await));
    }
    out
}

fn render(plans: &[(&str, String)]) -> String {
    let mut text = String::new();
    for (name, plan) in plans {
        text.push_str(&format!("== {name} ==\n{plan}\n\n"));
    }
    text
}

#[tokio::test]
async fn synthetic_example_plans() {
    let dir = or_panic(tempfile::tempdir());
    let config = GenerateConfig {
        visits: 50,
        seed: 3,
        format: OutputFormat::Csv,
        gzip: false,
    };
    or_panic(generate(&config, dir.path()));
    let job = or_panic(Job::from_toml(
        include_str!("../../../examples/stroke-synthetic.toml"),
        "stroke-synthetic.toml",
    ));
    let visits = dir.path().join("visits.csv");
    let patients = dir.path().join("patients.csv");
    let inputs = [
        ("visits", visits.as_path()),
        ("patients", patients.as_path()),
    ];
    insta::assert_snapshot!(render(&plans(&job, &inputs).await));
}

/// One input, read with a declared null string (typed after mapping it to null), no join.
#[tokio::test]
async fn kaggle_example_plans() {
    let dir = or_panic(tempfile::tempdir());
    let path = dir.path().join("stroke.csv");
    or_panic(std::fs::write(
        &path,
        "id,gender,age,hypertension,heart_disease,ever_married,work_type,Residence_type,avg_glucose_level,bmi,smoking_status,stroke\n\
         9046,Male,67,0,1,Yes,Private,Urban,228.69,36.6,formerly smoked,1\n\
         51676,Female,61,0,0,Yes,Self-employed,Rural,202.21,N/A,never smoked,1\n\
         31112,Male,80,0,1,Yes,Private,Rural,105.92,32.5,Unknown,0\n",
    ));
    let job = or_panic(Job::from_toml(
        include_str!("../../../examples/stroke-kaggle.toml"),
        "stroke-kaggle.toml",
    ));
    let inputs = [("patients", path.as_path())];
    insta::assert_snapshot!(render(&plans(&job, &inputs).await));
}
