//! Precise diagnosis of a CSV file the query engine could not read. The engine's own parse errors
//! can quote row data (PHI) and do not name the file, so when a scan fails the pipeline re-reads
//! the inputs here, finds the first bad line, and reports file, line and column without the
//! value. It runs only on the error path, so it favours clarity over speed.

use arrow::datatypes::{DataType, Schema};
use regex::Regex;

/// What is wrong with a CSV file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong, naming the column; never the value.
    pub message: String,
}

/// Finds the first line of `bytes` that does not fit `schema` (header expected). `nulls` matches
/// the strings that mean null.
pub fn diagnose(
    bytes: &[u8],
    schema: &Schema,
    delimiter: u8,
    nulls: Option<&Regex>,
) -> Option<CsvProblem> {
    if bytes.is_empty() {
        return Some(CsvProblem {
            line: 1,
            message: "the file is empty (no header row)".to_string(),
        });
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        return Some(CsvProblem {
            line,
            message: "invalid UTF-8 (the file must be UTF-8 encoded)".to_string(),
        });
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let header_len = match reader.headers() {
        Ok(h) => h.len(),
        Err(e) => {
            return Some(CsvProblem {
                line: 1,
                message: format!("unreadable header: {}", describe(&e)),
            });
        }
    };
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| line_of(bytes, p));
                return Some(CsvProblem {
                    line,
                    message: describe(&e),
                });
            }
        }
        let line = record.position().map_or(0, |p| line_of(bytes, p));
        if record.len() != header_len {
            return Some(CsvProblem {
                line,
                message: format!("expected {header_len} fields, found {}", record.len()),
            });
        }
        for (field, value) in schema.fields().iter().zip(record.iter()) {
            let text = String::from_utf8_lossy(value);
            if is_null(&text, nulls) {
                if !field.is_nullable() {
                    return Some(CsvProblem {
                        line,
                        message: format!(
                            "column {}: missing value in a required column",
                            field.name()
                        ),
                    });
                }
                continue;
            }
            if !parses_as(&text, field.data_type()) {
                return Some(CsvProblem {
                    line,
                    message: format!(
                        "column {}: value is not a valid {}",
                        field.name(),
                        type_name(field.data_type())
                    ),
                });
            }
        }
    }
}

/// The 1-based line of the first row of `bytes` (header expected) whose field in `column` is
/// neither null (empty, or matched by `nulls`) nor `accepted`; `None` when there is none, or no
/// such column, or the file stops parsing first (the scan's own error names that).
pub(crate) fn first_line_not_matching(
    bytes: &[u8],
    delimiter: u8,
    column: &str,
    nulls: Option<&Regex>,
    accepted: impl Fn(&str) -> bool,
) -> Option<u64> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(bytes);
    let index = reader.headers().ok()?.iter().position(|h| h == column)?;
    for record in reader.records() {
        let record = record.ok()?;
        let text = record.get(index).unwrap_or_default();
        if !is_null(text, nulls) && !accepted(text) {
            return record.position().map(|p| line_of(bytes, p));
        }
    }
    None
}

fn is_null(text: &str, nulls: Option<&Regex>) -> bool {
    text.is_empty() || nulls.is_some_and(|re| re.is_match(text))
}

/// The 1-based line of `bytes` a record starting at `position` is on. The reader's own line
/// count lags by one after a CRLF ending (the record starts after the CR, before the LF it has
/// not counted yet), and exports from Windows systems end lines so; the bytes are counted here.
pub(crate) fn line_of(bytes: &[u8], position: &csv::Position) -> u64 {
    let start = usize::try_from(position.byte())
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let start = start
        + bytes[start..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
    bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

fn describe(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8 (the file must be UTF-8 encoded)".to_string(),
        _ => "malformed CSV".to_string(),
    }
}

fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "integer",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            "non-negative integer"
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "number",
        DataType::Boolean => "boolean",
        DataType::Date32 | DataType::Date64 => "date (YYYY-MM-DD)",
        DataType::Timestamp(..) => "timestamp",
        _ => "value of the declared type",
    }
}

fn parses_as(text: &str, t: &DataType) -> bool {
    let t2 = text.trim();
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            t2.parse::<i64>().is_ok()
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            t2.parse::<u64>().is_ok()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => t2.parse::<f64>().is_ok(),
        DataType::Boolean => matches!(t2.to_ascii_lowercase().as_str(), "true" | "false"),
        DataType::Date32 | DataType::Date64 => {
            chrono::NaiveDate::parse_from_str(t2, "%Y-%m-%d").is_ok()
        }
        DataType::Timestamp(..) => {
            chrono::NaiveDateTime::parse_from_str(t2, "%Y-%m-%dT%H:%M:%S").is_ok()
                || chrono::NaiveDateTime::parse_from_str(t2, "%Y-%m-%d %H:%M:%S").is_ok()
                || chrono::NaiveDate::parse_from_str(t2, "%Y-%m-%d").is_ok()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("bp", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
        ])
    }

    fn check(text: &[u8]) -> Option<CsvProblem> {
        diagnose(text, &schema(), b',', Regex::new("^N/A$").ok().as_ref())
    }

    #[test]
    fn clean_file_has_no_problem() {
        assert_eq!(check(b"id,bp,day\na,120,2020-01-01\nb,N/A,\n"), None);
    }

    #[test]
    fn wrong_type_names_line_and_column_not_value() {
        let p = check(b"id,bp,day\na,120,2020-01-01\nb,abc,2020-01-02\n");
        assert_eq!(p.as_ref().map(|p| p.line), Some(3));
        let msg = p.map(|p| p.message).unwrap_or_default();
        assert!(
            msg.contains("column bp") && msg.contains("integer"),
            "{msg}"
        );
        assert!(!msg.contains("abc"), "{msg}");
    }

    #[test]
    fn the_first_value_not_accepted_is_found_by_line_skipping_nulls() {
        let nulls = Regex::new("^N/A$").ok();
        let find = |text: &[u8], column: &str| {
            first_line_not_matching(text, b',', column, nulls.as_ref(), |v| v == "0" || v == "1")
        };
        let text = b"id,y\r\na,0\r\nb,\r\nc,N/A\r\nd,2\r\ne,1\r\n";
        assert_eq!(find(text, "y"), Some(5));
        assert_eq!(find(b"id,y\na,0\nb,1\n", "y"), None);
        assert_eq!(find(text, "absent"), None);
    }

    #[test]
    fn lines_are_counted_alike_whatever_the_line_ending() {
        for text in [
            &b"id,bp,day\na,120,2020-01-01\nb,abc,2020-01-02\n"[..],
            b"id,bp,day\r\na,120,2020-01-01\r\nb,abc,2020-01-02\r\n",
            b"id,bp,day\r\n\r\na,120,2020-01-01\r\nb,abc,2020-01-02\r\n",
        ] {
            let blank = usize::from(text.starts_with(b"id,bp,day\r\n\r\n")) as u64;
            assert_eq!(check(text).map(|p| p.line), Some(3 + blank));
        }
        assert_eq!(
            check(b"id,bp,day\r\na,120,2020-01-01\r\nb,121\r\n").map(|p| p.line),
            Some(3)
        );
    }

    #[test]
    fn malformed_row_and_bad_utf8_are_located() {
        let p = check(b"id,bp,day\na,120,2020-01-01\nb,121\n");
        assert_eq!(
            p.map(|p| (p.line, p.message)),
            Some((3, "expected 3 fields, found 2".into()))
        );
        let p = check(b"id,bp,day\na,120,2020-01-01\nb\xff,121,2020-01-01\n");
        assert_eq!(p.map(|p| p.line), Some(3));
        assert_eq!(check(b"").map(|p| p.line), Some(1));
    }
}
