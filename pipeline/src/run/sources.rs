//! A job's inputs as delivered, for the record store's import: the same locations, sniffing,
//! typing, error naming and source hashing as a run, and nothing of its join, cleaning or
//! de-identification (a record store keeps what the hospital sent, encrypted).

use std::collections::BTreeMap;

use datafusion::prelude::{DataFrame, SessionContext};

use super::inputs::{self, Input, InputHashing, diagnose_on_error};
use crate::error::{Error, Result};
use crate::fingerprint::Hash32;
use crate::job::Job;
use crate::manifest::InputSpec;

/// Every input of a job, registered and being hashed.
#[derive(Debug)]
pub struct Sources {
    inputs: BTreeMap<String, Input>,
    hashing: InputHashing,
}

/// Opens every input of `job` on `ctx` (with `overrides` replacing input locations by name, as
/// `--input NAME=PATH` does for a run) and starts hashing the raw files (their source roots, as
/// `emrflow run` anchors them).
pub async fn open_sources(
    job: &Job,
    overrides: &BTreeMap<String, String>,
    ctx: &SessionContext,
) -> Result<Sources> {
    inputs::check_overrides(job, overrides)?;
    let inputs = inputs::register_inputs(job, overrides, ctx).await?;
    let names: Vec<String> = inputs.keys().cloned().collect();
    let hashing = InputHashing::start(ctx, &inputs, &names);
    Ok(Sources { inputs, hashing })
}

impl Sources {
    /// The rows of the input `name`, as read: its columns, without the marks a run's drop
    /// stage reads (a FHIR visit's value in a unit no rule converts is stored as missing).
    pub async fn frame(&self, ctx: &SessionContext, name: &str) -> Result<DataFrame> {
        let input = self
            .inputs
            .get(name)
            .ok_or_else(|| Error::invalid("inputs", format!("no input named {name}")))?;
        let frame = ctx.table(input.table.as_str()).await?;
        let marks: Vec<String> = input
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| super::fhir::unit_reason(n).is_some())
            .collect();
        let marks: Vec<&str> = marks.iter().map(String::as_str).collect();
        Ok(frame.drop_columns(&marks)?)
    }

    /// `result`, or, when the engine failed reading a CSV, the error naming its file, line and
    /// column.
    pub async fn diagnose<T>(&self, result: Result<T>) -> Result<T> {
        diagnose_on_error(result, &self.inputs).await
    }

    /// What each input is (location, format, files and sizes), in name order.
    pub fn specs(&self) -> Vec<InputSpec> {
        self.inputs.iter().map(|(name, i)| i.spec(name)).collect()
    }

    /// The source roots of the raw files, by input name, once hashed.
    pub async fn source_roots(&mut self) -> Result<BTreeMap<String, Hash32>> {
        self.hashing.finish().await
    }
}
