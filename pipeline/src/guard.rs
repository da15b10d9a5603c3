//! The PII guard's content half: scans string columns of what is about to be published for
//! identifier patterns (SSN-like numbers, phone numbers, e-mail addresses) and counts hits per
//! column. It never keeps or reports a matched value, only where and how many.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use regex::RegexSet;

use crate::error::{Error, Result};

/// Identifier kinds, in the order of [`PATTERNS`].
const KINDS: [&str; 3] = ["SSN-like numbers", "phone numbers", "e-mail addresses"];

/// One pattern per kind. Word boundaries keep hex pseudonyms and decimal measurements from
/// matching; separators are required for phone numbers so a plain integer is not one.
static PATTERNS: LazyLock<Option<RegexSet>> = LazyLock::new(|| {
    RegexSet::new([
        r"\b\d{3}-\d{2}-\d{4}\b",
        r"(?:\(\d{3}\)\s?|\b\d{3}[-.\s])\d{3}[-.\s]\d{4}\b",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    ])
    .ok()
});

/// Hit counts per column and kind.
#[derive(Debug, Clone, Default)]
pub struct PiiScanner {
    columns: Vec<String>,
    hits: BTreeMap<(String, usize), u64>,
}

impl PiiScanner {
    /// A scanner for the named string columns.
    pub fn new(columns: &[String]) -> Self {
        Self {
            columns: columns.to_vec(),
            hits: BTreeMap::new(),
        }
    }

    /// Counts matches in one batch.
    pub fn scan(&mut self, batch: &RecordBatch) {
        let Some(set) = PATTERNS.as_ref() else {
            return;
        };
        for name in &self.columns {
            let Ok(idx) = batch.schema().index_of(name) else {
                continue;
            };
            let column = batch.column(idx);
            let mut count = |v: &str| {
                for kind in set.matches(v).iter() {
                    *self.hits.entry((name.clone(), kind)).or_insert(0) += 1;
                }
            };
            match column.data_type() {
                DataType::Utf8 => column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .for_each(&mut count),
                DataType::LargeUtf8 => column
                    .as_string::<i64>()
                    .iter()
                    .flatten()
                    .for_each(&mut count),
                DataType::Utf8View => column
                    .as_string_view()
                    .iter()
                    .flatten()
                    .for_each(&mut count),
                _ => {}
            }
        }
    }

    /// Adds another scanner's counts.
    pub fn merge(&mut self, other: PiiScanner) {
        for (k, n) in other.hits {
            *self.hits.entry(k).or_insert(0) += n;
        }
    }

    /// Fails, naming every column and count, if anything matched.
    pub fn verdict(&self) -> Result<()> {
        if self.hits.is_empty() {
            return Ok(());
        }
        let found: Vec<String> = self
            .hits
            .iter()
            .map(|((col, kind), n)| {
                format!(
                    "column {col} has {n} values that look like {}",
                    KINDS[*kind]
                )
            })
            .collect();
        Err(Error::PiiGuard(format!(
            "{}; nothing was published",
            found.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(values: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("notes", DataType::Utf8, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values.to_vec()))])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn finds_each_kind_without_reporting_values() {
        let mut s = PiiScanner::new(&["notes".to_string()]);
        s.scan(&batch(&[
            "call (555) 123-4567",
            "ssn 123-45-6789",
            "mail jo.smith@example.com",
            "555.867.5309 or 555 867 5309",
        ]));
        let err = s.verdict().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("column notes has 2 values that look like phone numbers"),
            "{err}"
        );
        assert!(
            err.contains("1 values that look like SSN-like numbers"),
            "{err}"
        );
        assert!(err.contains("e-mail addresses"), "{err}");
        assert!(
            !err.contains("123-45-6789") && !err.contains("example.com"),
            "{err}"
        );
    }

    #[test]
    fn pseudonyms_and_measurements_are_not_pii() {
        let mut s = PiiScanner::new(&["notes".to_string()]);
        s.scan(&batch(&[
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "1234567890123",
            "bp 120/80, glucose 105.5",
            "2020-01-15",
        ]));
        assert!(s.verdict().is_ok());
    }
}
