//! End-to-end tests of the `emrflow` binary, one test binary with a module per area.

mod cli;
mod cluster;
mod examples;
mod fhir;
mod ledger;
mod ml;
mod object_store;
mod pipeline;
mod provenance;
mod records;
mod serve;
mod support;
