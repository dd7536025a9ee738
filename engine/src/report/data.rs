//! The table: CSV text cells, read generically.

use crate::InputError;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Data {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Data {
    pub(super) fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
    pub(super) fn cell(&self, row: usize, col: usize) -> &str {
        self.rows[row].get(col).map_or("", |s| s.trim())
    }
    pub(super) fn is_numeric(&self, col: usize) -> bool {
        let mut any = false;
        for r in 0..self.rows.len() {
            let c = self.cell(r, col);
            if c.is_empty() {
                continue;
            }
            if c.parse::<f64>().is_err() {
                return false;
            }
            any = true;
        }
        any
    }
    pub(super) fn is_text(&self, col: usize) -> bool {
        (0..self.rows.len()).any(|r| !self.cell(r, col).is_empty()) && !self.is_numeric(col)
    }
    pub(super) fn number(&self, row: usize, col: usize) -> Option<f64> {
        self.cell(row, col)
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    }
}

/// Parse CSV text.
pub fn parse(text: &str) -> Result<Data, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| InputError::msg(format!("not a CSV table: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for r in reader.records() {
        let r = r.map_err(|e| InputError::msg(format!("bad CSV: {e}")))?;
        rows.push(r.iter().map(str::to_owned).collect());
    }
    Ok(Data { header, rows })
}

/// Read and parse a CSV file.
pub fn load(path: &Path) -> Result<Data, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::msg(format!("cannot read `{}`: {e}", path.display())))?;
    parse(&text).map_err(|e| InputError::msg(format!("`{}`: {e}", path.display())))
}
