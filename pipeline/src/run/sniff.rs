//! What a CSV input's first bytes say before the engine reads it: whether the file is gzip or
//! zstd compressed (from its magic bytes, since exports are often renamed or served without an
//! extension), whether its header uses another delimiter than the job's, and whether any row
//! follows the header. The engine's own messages for these cases name a column type or an
//! encoding, not the cause, so they are caught here, by file and line.

use std::io::Read;

use datafusion::datasource::file_format::file_compression_type::FileCompressionType;

use crate::error::{Error, Result};

/// How much of each file is read to sniff it: a header and a first row fit many times over.
pub(super) const HEAD_BYTES: u64 = 64 * 1024;

/// The most decompressed bytes kept from a head: a compressed head can expand a hundredfold.
const HEAD_DECODED: u64 = 1024 * 1024;

/// A file's compression, as its content says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a file's first bytes.
    pub(super) fn of(bytes: &[u8]) -> Self {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }

    /// The engine's reader setting.
    pub(super) fn engine(self) -> FileCompressionType {
        match self {
            Self::None => FileCompressionType::UNCOMPRESSED,
            Self::Gzip => FileCompressionType::GZIP,
            Self::Zstd => FileCompressionType::ZSTD,
        }
    }

    /// The bytes `bytes` decompress to, at most `limit` of them, and whether that is all of
    /// them. A prefix of a compressed file decompresses to a prefix of its content; where the
    /// prefix (or the file) breaks off, what came before is kept.
    pub(super) fn decode(self, bytes: &[u8], limit: u64) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let complete = match self {
            Self::None => {
                let n = bytes
                    .len()
                    .min(usize::try_from(limit).unwrap_or(usize::MAX));
                out.extend_from_slice(&bytes[..n]);
                n == bytes.len()
            }
            Self::Gzip => read_some(flate2::read::MultiGzDecoder::new(bytes), limit, &mut out),
            Self::Zstd => match zstd::stream::read::Decoder::new(bytes) {
                Ok(d) => read_some(d, limit, &mut out),
                Err(_) => false,
            },
        };
        (out, complete)
    }
}

/// Reads up to `limit` bytes of `reader` into `out`; true when the reader ended cleanly within
/// the limit.
fn read_some(reader: impl Read, limit: u64, out: &mut Vec<u8>) -> bool {
    let mut limited = reader.take(limit.saturating_add(1));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match limited.read(&mut buf) {
            Ok(0) => return out.len() as u64 <= limit,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
        if out.len() as u64 > limit {
            out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            return false;
        }
    }
}

/// What one file's head says.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) compression: Compression,
    /// Whether a row follows the header; `None` when the head ends before the first row does.
    pub(super) has_rows: Option<bool>,
}

/// Sniffs `head`, the first bytes of the file at `path` (all of it when `whole`), for input
/// `input` read with `delimiter`.
pub(super) fn sniff(
    input: &str,
    path: &str,
    head: &[u8],
    whole: bool,
    delimiter: u8,
) -> Result<Head> {
    let compression = Compression::of(head);
    let (text, complete) = compression.decode(head, HEAD_DECODED);
    let complete = whole && complete;
    check_delimiter(input, path, &text, delimiter)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_slice());
    let mut record = csv::ByteRecord::new();
    let has_rows = match reader.read_byte_record(&mut record) {
        // A row that ends where the head does may be cut short, but it is a row.
        Ok(true) => Some(true),
        Ok(false) if complete => Some(false),
        Ok(false) | Err(_) => None,
    };
    Ok(Head {
        compression,
        has_rows,
    })
}

/// The other delimiters an export is commonly written with.
const OTHER_DELIMITERS: [u8; 3] = [b';', b'\t', b'|'];

/// Refuses a header that has none of the job's delimiter but another common one: read with the
/// job's, the whole line would be one column and every later error would be about that.
fn check_delimiter(input: &str, path: &str, text: &[u8], delimiter: u8) -> Result<()> {
    let header = text.split(|&b| b == b'\n').next().unwrap_or_default();
    if header.contains(&delimiter) {
        return Ok(());
    }
    let Some(&found) = OTHER_DELIMITERS
        .iter()
        .filter(|&&d| d != delimiter)
        .max_by_key(|&&d| header.iter().filter(|&&b| b == d).count())
        .filter(|&&d| header.contains(&d))
    else {
        return Ok(());
    };
    Err(Error::Csv {
        path: path.to_string(),
        line: 1,
        message: format!(
            "the header has no {} but is delimited by {}: set delimiter = {} in [inputs.{input}]",
            shown(delimiter),
            shown(found),
            toml_char(found)
        ),
    })
}

fn shown(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "tabs".to_string(),
        b',' => "commas".to_string(),
        b';' => "semicolons".to_string(),
        b'|' => "'|'".to_string(),
        d => format!("'{}'", char::from(d)),
    }
}

fn toml_char(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "\"\\t\"".to_string(),
        d => format!("\"{}\"", char::from(d)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
        e.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 3).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn compression_is_read_from_the_content() {
        let text = b"id,bmi\n1,20.5\n".repeat(1000);
        for (bytes, c) in [
            (text.clone(), Compression::None),
            (gzip(&text), Compression::Gzip),
            (zstd(&text), Compression::Zstd),
        ] {
            assert_eq!(Compression::of(&bytes), c);
            assert_eq!(c.decode(&bytes, u64::MAX), (text.clone(), true));
            // A compressed head decodes to a prefix, flagged as cut short (a plain one is all
            // it holds: the caller knows whether it is the whole file).
            let (prefix, whole) = c.decode(&bytes[..bytes.len() / 2], u64::MAX);
            assert_eq!(whole, c == Compression::None, "{c:?}");
            assert!(text.starts_with(&prefix), "{c:?}");
            let (capped, whole) = c.decode(&bytes, 100);
            assert_eq!((capped.as_slice(), whole), (&text[..100], false));
        }
    }

    #[test]
    fn a_header_without_rows_is_found_whatever_the_compression() {
        for bytes in [b"id,bmi\n".to_vec(), gzip(b"id,bmi\n"), zstd(b"id,bmi\r\n")] {
            let head = sniff("v", "v.csv", &bytes, true, b',').unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(head.has_rows, Some(false));
            // Only the head of a longer file: nothing can be said.
            let head = sniff("v", "v.csv", &bytes, false, b',').unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(head.has_rows, None);
        }
        let head = sniff("v", "v.csv", &gzip(b"id,bmi\n1,2"), true, b',')
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (head.compression, head.has_rows),
            (Compression::Gzip, Some(true))
        );
    }

    #[test]
    fn another_delimiter_is_named_with_the_setting_that_reads_it() {
        let err = |text: &[u8], d: u8| {
            sniff("visits", "v.csv", text, true, d)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            err(b"id;bmi;age\n1;2;3\n", b',').as_deref(),
            Some(
                "v.csv:1: the header has no commas but is delimited by semicolons: \
                 set delimiter = \";\" in [inputs.visits]"
            )
        );
        assert_eq!(
            err(&gzip(b"id\tbmi\n1\t2\n"), b',').as_deref(),
            Some(
                "v.csv:1: the header has no commas but is delimited by tabs: \
                 set delimiter = \"\\t\" in [inputs.visits]"
            )
        );
        assert_eq!(err(b"id;bmi\n1;2\n", b';'), None);
        assert_eq!(err(b"id,note;x\n1,a;b\n", b','), None);
        // One column and no other delimiter: a one-column file.
        assert_eq!(err(b"id\n1\n", b','), None);
    }
}
