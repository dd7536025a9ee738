//! Result tables: cells, one shard's part (a CSV with its own header), and the
//! column logic of merging parts into one CSV.
//!
//! A part's columns are the names its rows used, in first-seen order; the merged
//! table's columns are the union over parts in shard order, with `error` last.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;

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
    #[error("the shard's rows use more than `limits.columns` ({limit}) columns")]
    TooManyColumns { limit: usize },
}

/// Builds one shard's part as rows arrive.
pub struct PartBuilder {
    columns: Vec<String>,
    index: HashMap<String, usize>,
    body: csv::Writer<Vec<u8>>,
    rows: u64,
    /// Bytes of cell text and column names so far (the CSV writer buffers,
    /// so count ourselves).
    bytes: u64,
    limit: u64,
    max_columns: usize,
    /// Whether the engine's own columns are refused (a guest's rows).
    guest: bool,
    scratch: Vec<String>,
}

/// Columns the engine writes itself; a guest may not use their names.
pub const RESERVED_COLUMNS: &[&str] = &[ERROR_COLUMN];

/// Longest column name, in bytes.
pub const COLUMN_NAME_MAX: usize = 256;

impl PartBuilder {
    /// A part for a guest's rows: at most `limit` bytes and `max_columns`
    /// columns, none of them reserved.
    pub fn new(limit: u64, max_columns: u64) -> Self {
        PartBuilder {
            columns: Vec::new(),
            index: HashMap::new(),
            body: csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(Vec::new()),
            rows: 0,
            bytes: 0,
            limit,
            max_columns: usize::try_from(max_columns).unwrap_or(usize::MAX),
            guest: true,
            scratch: Vec::new(),
        }
    }

    /// A part the engine writes (an error row): no limits.
    fn engine() -> Self {
        PartBuilder {
            guest: false,
            ..PartBuilder::new(u64::MAX, u64::MAX)
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
                    let malformed = |why: String| Err(RowError::Malformed { row: n, why });
                    if self.guest && RESERVED_COLUMNS.contains(&name) {
                        return malformed(format!(
                            "the column name `{name}` is reserved for the engine (it says why a shard failed); \
                             rename the column"
                        ));
                    }
                    if name.len() > COLUMN_NAME_MAX {
                        return malformed(format!(
                            "a column name of {} bytes; at most {COLUMN_NAME_MAX}",
                            name.len()
                        ));
                    }
                    if self.columns.len() >= self.max_columns {
                        return Err(RowError::TooManyColumns {
                            limit: self.max_columns,
                        });
                    }
                    self.bytes += name.len() as u64 + 1;
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

    /// The finished part: header line, then the rows; nothing at all for a
    /// shard that wrote no row (an empty header would read as one column
    /// named ``).
    pub fn finish(self) -> Vec<u8> {
        if self.columns.is_empty() {
            return Vec::new();
        }
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
    let mut part = PartBuilder::engine();
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
            if c != ERROR_COLUMN && !c.is_empty() && seen.insert(c.clone()) {
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

/// Write a part's rows to `out`, placed under the merged `columns`; the
/// number of rows. Rows are written as they are padded: memory does not grow
/// with how much padding a narrow part needs under a wide table.
pub fn append_part(
    part: &[u8],
    columns: &[String],
    out: &mut impl Write,
) -> Result<u64, csv::Error> {
    match append_plain(part, columns, out)? {
        Some(n) => Ok(n),
        None => append_parsed(part, columns, out),
    }
}

fn append_parsed(part: &[u8], columns: &[String], out: &mut impl Write) -> Result<u64, csv::Error> {
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
        .from_writer(out);
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
/// `csv` writer produces (a field is quoted as a whole, `""` inside). The
/// part is checked first; then each record is copied as it is and padded
/// with empty fields. Anything else (`Ok(None)`, nothing written) takes
/// the parser.
fn append_plain(
    part: &[u8],
    columns: &[String],
    out: &mut impl Write,
) -> std::io::Result<Option<u64>> {
    let Some((header, body)) = plain_header(part) else {
        return Ok(None);
    };
    if header.len() > columns.len() || header.iter().zip(columns).any(|(h, c)| *h != c.as_bytes()) {
        return Ok(None);
    }
    let Some(n) = plain_records(body, header.len(), |_, _| Ok(()))? else {
        return Ok(None);
    };
    if header.len() == columns.len() {
        out.write_all(body)?;
    } else {
        let padding = vec![b','; columns.len()];
        plain_records(body, header.len(), |record, fields| {
            out.write_all(record)?;
            out.write_all(&padding[..columns.len() - fields])?;
            out.write_all(b"\n")
        })?;
    }
    Ok(Some(n))
}

/// Walk the records of a plain part body, each without its newline and with
/// its number of fields; `None` if the body is not plain.
fn plain_records(
    body: &[u8],
    max_fields: usize,
    mut each: impl FnMut(&[u8], usize) -> std::io::Result<()>,
) -> std::io::Result<Option<u64>> {
    let (mut i, mut record, mut fields, mut n) = (0, 0, 1, 0);
    let mut field_start = true;
    while i < body.len() {
        match body[i] {
            b'"' if field_start => {
                // A quoted field runs to the quote not followed by another.
                i += 1;
                loop {
                    match (body.get(i), body.get(i + 1)) {
                        (None, _) => return Ok(None),
                        (Some(b'"'), Some(b'"')) => i += 2,
                        (Some(b'"'), _) => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                if !matches!(body.get(i), Some(b',' | b'\n')) {
                    return Ok(None);
                }
                field_start = false;
                continue;
            }
            b'"' | b'\r' => return Ok(None),
            b',' => {
                fields += 1;
                field_start = true;
            }
            b'\n' => {
                if i == record || fields > max_fields {
                    return Ok(None);
                }
                each(&body[record..i], fields)?;
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
        return Ok(None);
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_grow_and_merge() {
        let mut a = PartBuilder::new(1 << 20, 100);
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
        // A shard without rows has an empty part, which adds no column.
        let none = PartBuilder::new(1 << 20, 10).finish();
        assert!(none.is_empty());
        assert_eq!(
            merged_columns([parse_header(&none).unwrap().as_slice(), ha.as_slice()]),
            cols
        );
        assert_eq!(append_part(&none, &cols, &mut Vec::new()).unwrap(), 0);
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
            let fast = append_plain(part, &cols, &mut plain).unwrap();
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
            .map(|p| append_plain(p, &cols, &mut Vec::new()).unwrap().is_some())
            .collect();
        assert_eq!(took, [true, true, true, false, false, false, false]);
    }

    #[test]
    fn refuses_duplicate_columns_and_oversize() {
        let mut p = PartBuilder::new(10, 2);
        let err = p
            .push([("a", &Cell::Int(1)), ("a", &Cell::Int(2))])
            .unwrap_err();
        assert!(err.to_string().contains("`a` appears twice"), "{err}");
        let big = Cell::Text("x".repeat(20));
        assert_eq!(p.push([("a", &big)]), Err(RowError::TooLarge { limit: 10 }));
        let mut p = PartBuilder::new(1 << 20, 2);
        let err = p.push([(ERROR_COLUMN, &Cell::Int(1))]).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let long = "c".repeat(COLUMN_NAME_MAX + 1);
        assert!(p.push([(long.as_str(), &Cell::Int(1))]).is_err());
        p.push([("a", &Cell::Int(1)), ("b", &Cell::Int(1))])
            .unwrap();
        assert_eq!(
            p.push([("c", &Cell::Int(1))]),
            Err(RowError::TooManyColumns { limit: 2 })
        );
        // Column names count against the size.
        let mut p = PartBuilder::new(8, 100);
        assert_eq!(
            p.push([("abcdefgh", &Cell::Null)]),
            Err(RowError::TooLarge { limit: 8 })
        );
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
            if append_plain(part.as_bytes(), &cols, &mut plain).unwrap().is_some() {
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
            let mut part = PartBuilder::new(u64::MAX, u64::MAX);
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
