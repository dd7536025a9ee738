//! Result tables: cells, one shard's part (a CSV with its own header), and the
//! column logic of merging parts into one CSV.
//!
//! A part's columns are the names its rows used, in first-seen order; the merged
//! table's columns are the union over parts in shard order, with `error` last.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The column every output has: empty on success, `kind: message` on failure.
pub const ERROR_COLUMN: &str = "error";

/// One cell of a result table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Cell {
    /// The CSV text of a cell: null is empty, floats keep a `.0` or exponent.
    pub fn to_text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => format!("{f:?}"),
            Cell::Text(s) => s.clone(),
        }
    }
}

/// Why a row was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("malformed row {row}: {why}")]
    Malformed { row: u64, why: String },
    #[error("the shard's output exceeds `limits.output_size` ({limit} bytes)")]
    TooLarge { limit: u64 },
}

/// Builds one shard's part as rows arrive.
pub struct PartBuilder {
    columns: Vec<String>,
    index: HashMap<String, usize>,
    body: csv::Writer<Vec<u8>>,
    rows: u64,
    /// Bytes of cell text so far (the CSV writer buffers, so count ourselves).
    bytes: u64,
    limit: u64,
    scratch: Vec<String>,
}

/// Most columns one row may have; guards the host against absurd rows.
const MAX_COLUMNS: usize = 10_000;

impl PartBuilder {
    /// A part that may grow to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        PartBuilder {
            columns: Vec::new(),
            index: HashMap::new(),
            body: csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(Vec::new()),
            rows: 0,
            bytes: 0,
            limit,
            scratch: Vec::new(),
        }
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append a row of named cells.
    pub fn push<'a>(
        &mut self,
        row: impl IntoIterator<Item = (&'a str, &'a Cell)>,
    ) -> Result<(), RowError> {
        let n = self.rows + 1;
        self.scratch.clear();
        let mut seen = vec![false; self.columns.len()];
        for (name, cell) in row {
            if name.is_empty() {
                return Err(RowError::Malformed {
                    row: n,
                    why: "a cell has an empty column name".into(),
                });
            }
            let i = match self.index.get(name) {
                Some(&i) => i,
                None => {
                    if self.columns.len() >= MAX_COLUMNS {
                        return Err(RowError::Malformed {
                            row: n,
                            why: format!("more than {MAX_COLUMNS} columns"),
                        });
                    }
                    self.columns.push(name.to_owned());
                    self.index.insert(name.to_owned(), self.columns.len() - 1);
                    seen.push(false);
                    self.columns.len() - 1
                }
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(RowError::Malformed {
                    row: n,
                    why: format!("column `{name}` appears twice"),
                });
            }
            if self.scratch.len() <= i {
                self.scratch.resize(i + 1, String::new());
            }
            self.scratch[i] = cell.to_text();
        }
        if self.scratch.is_empty() {
            return Err(RowError::Malformed {
                row: n,
                why: "the row has no cells".into(),
            });
        }
        self.body
            .write_record(&self.scratch)
            .map_err(|e| RowError::Malformed {
                row: n,
                why: e.to_string(),
            })?;
        self.rows = n;
        self.bytes += self.scratch.iter().map(|c| c.len() as u64 + 1).sum::<u64>();
        if self.bytes > self.limit {
            return Err(RowError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// The finished part: header line, then the rows.
    pub fn finish(self) -> Vec<u8> {
        let body = self.body.into_inner().unwrap_or_default();
        let mut header = csv::Writer::from_writer(Vec::with_capacity(body.len() + 64));
        // Writing to a Vec cannot fail.
        let _ = header.write_record(&self.columns);
        let mut out = header.into_inner().unwrap_or_default();
        out.extend_from_slice(&body);
        // Parts wait in the store until the merge: no spare capacity.
        out.shrink_to_fit();
        out
    }
}

/// The part of a failed shard: its key cells and the error.
pub fn error_part(key: &[(String, Cell)], error: &str) -> Vec<u8> {
    let mut part = PartBuilder::new(u64::MAX);
    let error = Cell::Text(error.to_owned());
    let cells = key
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([(ERROR_COLUMN, &error)]);
    // A key with duplicate names is the plugin's bug; keep the error regardless.
    if part.push(cells).is_err() {
        let _ = part.push([(ERROR_COLUMN, &error)]);
    }
    part.finish()
}

/// The union of part headers in order of first appearance, `error` last.
pub fn merged_columns<'a>(headers: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut columns: Vec<String> = Vec::new();
    for header in headers {
        for c in header {
            if c != ERROR_COLUMN && seen.insert(c.clone()) {
                columns.push(c.clone());
            }
        }
    }
    columns.push(ERROR_COLUMN.to_owned());
    columns
}

/// The header of a part when it is plain (no quotes, no `\r`, not empty):
/// its fields and where the body starts. Parsing it by hand matters: building
/// a CSV parser costs about 30 µs, more than a small shard's whole run.
fn plain_header(part: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let end = part.iter().position(|&b| b == b'\n')?;
    let line = &part[..end];
    if line.is_empty() || line.iter().any(|&b| b == b'"' || b == b'\r') {
        return None;
    }
    Some((line.split(|&b| b == b',').collect(), &part[end + 1..]))
}

/// Parse the header line of a part.
pub fn parse_header(bytes: &[u8]) -> Result<Vec<String>, csv::Error> {
    if let Some((fields, _)) = plain_header(bytes)
        && let Ok(fields) = fields
            .into_iter()
            .map(|f| std::str::from_utf8(f).map(str::to_owned))
            .collect()
    {
        return Ok(fields);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::StringRecord::new();
    reader.read_record(&mut record)?;
    Ok(record.iter().map(str::to_owned).collect())
}

/// Copy a part's rows to the end of `out`, placed under the merged `columns`;
/// the number of rows.
pub fn append_part(part: &[u8], columns: &[String], out: &mut Vec<u8>) -> Result<u64, csv::Error> {
    match append_plain(part, columns, out) {
        Some(n) => Ok(n),
        None => append_parsed(part, columns, out),
    }
}

fn append_parsed(part: &[u8], columns: &[String], out: &mut Vec<u8>) -> Result<u64, csv::Error> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(part);
    let header = reader.headers()?.clone();
    let source: HashMap<&str, usize> = header.iter().enumerate().map(|(i, h)| (h, i)).collect();
    // For each output column, the part's field that fills it, if any.
    let from: Vec<Option<usize>> = columns
        .iter()
        .map(|c| source.get(c.as_str()).copied())
        .collect();
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(&mut *out);
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    while reader.read_byte_record(&mut record)? {
        writer.write_record(
            from.iter()
                .map(|f| f.and_then(|j| record.get(j)).unwrap_or(b"")),
        )?;
        n += 1;
    }
    writer.flush()?;
    Ok(n)
}

/// `append_part` without a CSV parser, for what the host itself writes: a
/// plain header that begins `columns`, and records in the subset of CSV the
/// `csv` writer produces (a field is quoted as a whole, `""` inside). Each
/// record is copied as it is and padded with empty fields. Anything else
/// (`None`, nothing written) takes the parser.
fn append_plain(part: &[u8], columns: &[String], out: &mut Vec<u8>) -> Option<u64> {
    let (header, body) = plain_header(part)?;
    if header.len() > columns.len() || header.iter().zip(columns).any(|(h, c)| *h != c.as_bytes()) {
        return None;
    }
    let start = out.len();
    let give_up = |out: &mut Vec<u8>| {
        out.truncate(start);
        None
    };
    let (mut i, mut record, mut fields, mut n) = (0, 0, 1, 0);
    let mut field_start = true;
    while i < body.len() {
        match body[i] {
            b'"' if field_start => {
                // A quoted field runs to the quote not followed by another.
                i += 1;
                loop {
                    match (body.get(i), body.get(i + 1)) {
                        (None, _) => return give_up(out),
                        (Some(b'"'), Some(b'"')) => i += 2,
                        (Some(b'"'), _) => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                if !matches!(body.get(i), Some(b',' | b'\n')) {
                    return give_up(out);
                }
                field_start = false;
                continue;
            }
            b'"' | b'\r' => return give_up(out),
            b',' => {
                fields += 1;
                field_start = true;
            }
            b'\n' => {
                if i == record || fields > header.len() {
                    return give_up(out);
                }
                out.extend_from_slice(&body[record..i]);
                out.extend(std::iter::repeat_n(b',', columns.len() - fields));
                out.push(b'\n');
                n += 1;
                record = i + 1;
                fields = 1;
                field_start = true;
            }
            _ => field_start = false,
        }
        i += 1;
    }
    if record != body.len() {
        return give_up(out);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_grow_and_merge() {
        let mut a = PartBuilder::new(1 << 20);
        a.push([("x", &Cell::Int(1))]).unwrap();
        a.push([("y", &Cell::Float(2.0)), ("x", &Cell::Int(2))])
            .unwrap();
        let a = a.finish();
        assert_eq!(String::from_utf8_lossy(&a), "x,y\n1\n2,2.0\n");
        let b = error_part(&[("x".into(), Cell::Int(3))], "trap: boom");
        let ha = parse_header(&a).unwrap();
        let hb = parse_header(&b).unwrap();
        let cols = merged_columns([ha.as_slice(), hb.as_slice()]);
        assert_eq!(cols, ["x", "y", "error"]);
        let mut out = b"x,y,error\n".to_vec();
        append_part(&a, &cols, &mut out).unwrap();
        append_part(&b, &cols, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "x,y,error\n1,,\n2,2.0,\n3,,trap: boom\n");
    }

    /// Compared as data: `""` and an empty field are the same cell.
    pub fn records(bytes: &[u8]) -> Vec<csv::StringRecord> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes)
            .records()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn plain_and_parsed_merges_agree() {
        let cols: Vec<String> = ["a", "b", "c", "error"].map(String::from).to_vec();
        let parts: [&[u8]; 7] = [
            b"a,b\n1,2\n3\n",
            b"a,b\n\"x,\"\"y\"\"\n\",2\n",
            b"a,b\n\"\"\n",
            b"b,a\n1,2\n",
            b"a\n1\n\n2\n",
            b"a,b\n1,2",
            b"a,b\nx\"y,2\n",
        ];
        for part in parts {
            let mut plain = Vec::new();
            let fast = append_plain(part, &cols, &mut plain);
            let mut parsed = Vec::new();
            append_parsed(part, &cols, &mut parsed).unwrap();
            match fast {
                Some(n) => {
                    assert_eq!(records(&plain), records(&parsed), "{part:?}");
                    assert_eq!(n as usize, records(&parsed).len());
                }
                None => assert!(plain.is_empty(), "{part:?}"),
            }
            let mut out = Vec::new();
            append_part(part, &cols, &mut out).unwrap();
            assert_eq!(records(&out), records(&parsed), "{part:?}");
        }
        // Which of them took the plain path.
        let took: Vec<bool> = parts
            .iter()
            .map(|p| append_plain(p, &cols, &mut Vec::new()).is_some())
            .collect();
        assert_eq!(took, [true, true, true, false, false, false, false]);
    }

    #[test]
    fn refuses_duplicate_columns_and_oversize() {
        let mut p = PartBuilder::new(10);
        let err = p
            .push([("a", &Cell::Int(1)), ("a", &Cell::Int(2))])
            .unwrap_err();
        assert!(err.to_string().contains("`a` appears twice"), "{err}");
        let big = Cell::Text("x".repeat(20));
        assert_eq!(p.push([("a", &big)]), Err(RowError::TooLarge { limit: 10 }));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A part is written by the host, but the store could hand back anything:
        /// merging garbage must fail cleanly or copy rows, never panic.
        #[test]
        fn merging_arbitrary_parts_never_panics(part in proptest::collection::vec(any::<u8>(), 0..300)) {
            let columns = match parse_header(&part) {
                Ok(h) => merged_columns([h.as_slice()]),
                Err(_) => vec![ERROR_COLUMN.to_owned()],
            };
            let _ = append_part(&part, &columns, &mut Vec::new());
        }

        /// Where the hand-written path takes a part, it agrees with the parser.
        #[test]
        fn plain_merge_agrees_with_the_parser(body in "[ab,\"\\n\\r]{0,40}") {
            let cols: Vec<String> = ["a", "b", "c", "error"].map(String::from).to_vec();
            let part = format!("a,b\n{body}");
            let mut plain = Vec::new();
            if append_plain(part.as_bytes(), &cols, &mut plain).is_some() {
                let mut parsed = Vec::new();
                append_parsed(part.as_bytes(), &cols, &mut parsed).unwrap();
                prop_assert_eq!(tests::records(&plain), tests::records(&parsed));
            } else {
                prop_assert!(plain.is_empty());
            }
        }

        /// Rows of arbitrary cells round-trip through a part and the merge.
        #[test]
        fn rows_survive_the_merge(rows in proptest::collection::vec(proptest::collection::vec(("[a-c]", ".{0,6}"), 1..4), 1..6)) {
            let mut part = PartBuilder::new(u64::MAX);
            let mut expected = Vec::new();
            for row in &rows {
                let mut seen = std::collections::HashSet::new();
                let cells: Vec<(String, Cell)> = row
                    .iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| (k.clone(), Cell::Text(v.clone())))
                    .collect();
                part.push(cells.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
                expected.push(cells);
            }
            let bytes = part.finish();
            let columns = merged_columns([parse_header(&bytes).unwrap().as_slice()]);
            let mut header = csv::Writer::from_writer(Vec::new());
            header.write_record(&columns).unwrap();
            let mut text = header.into_inner().unwrap();
            prop_assert_eq!(append_part(&bytes, &columns, &mut text).unwrap(), rows.len() as u64);
            let mut reader = csv::Reader::from_reader(text.as_slice());
            for (record, cells) in reader.records().zip(&expected) {
                let record = record.unwrap();
                for (k, v) in cells {
                    let i = columns.iter().position(|c| c == k).unwrap();
                    let Cell::Text(v) = v else { unreachable!() };
                    prop_assert_eq!(&record[i], v.as_str());
                }
            }
        }
    }
}
