#![doc = include_str!("../README.md")]

pub mod baseline;
pub mod categories;
pub mod csvcheck;
pub mod error;
pub mod fhir;
pub mod fingerprint;
pub mod functions;
pub mod generate;
pub mod guard;
pub mod job;
pub mod manifest;
pub mod moments;
pub mod run;
pub mod store;
pub mod transforms;

pub use error::{Error, Result};
pub use job::Job;
pub use manifest::Manifest;
pub use run::{
    NoProgress, Progress, RunOptions, RunSummary, StagedRun, default_cache_limit, run_job,
    stage_job,
};
