#![doc = include_str!("../README.md")]

pub mod access;
pub mod categories;
mod error;
pub mod import;
pub mod keys;
pub mod record;
pub mod store;
pub mod tree;

pub use access::{GrantScope, PatientView, ReadRequest, Records, access_report};
pub use categories::CategoryMap;
pub use error::{Error, Result};
pub use import::{Imported, import_job};
pub use keys::{MASTER_KEY_ENV, MasterKey};
pub use store::Store;
