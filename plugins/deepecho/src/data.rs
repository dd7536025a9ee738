//! Loading datasets in the DeepEcho layout and writing sequences back as CSV.

use guest_sdk::{Error, Result, bail};
use std::collections::HashMap;
use std::path::Path;

/// How a column's values are encoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Plain numbers; `NaN` is a missing value.
    Numeric,
    /// Values are indices into these labels (stored as `f64`); `NaN` is missing.
    Categorical(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

impl Column {
    pub fn n_categories(&self) -> usize {
        match &self.kind {
            Kind::Numeric => 0,
            Kind::Categorical(c) => c.len(),
        }
    }
}

/// One entity: its context values and its sequence (step-major, `len * n_dims`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub entity: String,
    pub context: Vec<f64>,
    pub data: Vec<f64>,
    pub len: usize,
}

impl Sequence {
    pub fn value(&self, step: usize, dim: usize, n_dims: usize) -> f64 {
        self.data[step * n_dims + dim]
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub entity_col: String,
    pub context_cols: Vec<Column>,
    pub data_cols: Vec<Column>,
    pub seqs: Vec<Sequence>,
}

impl Dataset {
    pub fn n_dims(&self) -> usize {
        self.data_cols.len()
    }
}

/// One row of `datasets.csv`.
#[derive(Clone, Debug)]
pub struct DatasetInfo {
    pub name: String,
    pub size_in_kb: f64,
}

/// Split one CSV line into fields (RFC 4180 quoting).
pub fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == ',' {
            fields.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    fields
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// An I/O error for people: its kind (`not found`), without the WASI errno
/// number that `Display` adds (`No such file or directory (os error 44)`).
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        _ => e
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Read `datasets.csv` from the data directory, in size order.
pub fn list_datasets(dir: &Path) -> Result<Vec<DatasetInfo>> {
    let path = dir.join("datasets.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                " (the data directory needs a `datasets.csv` listing the datasets, and a \
                     folder per dataset; set `run.data` to such a folder)"
            }
            _ => "",
        };
        Error::new(format!(
            "cannot read {}: {}{hint}",
            path.display(),
            io_text(&e)
        ))
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = split_csv_line(lines.next().unwrap_or_default());
    let name_i = header
        .iter()
        .position(|h| h.trim() == "dataset")
        .ok_or_else(|| Error::new(format!("{}: no `dataset` column", path.display())))?;
    let size_i = header.iter().position(|h| h.trim() == "size_in_kb");
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f = split_csv_line(line);
        let name = f
            .get(name_i)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if name.is_empty() {
            bail!("{}: line {} has no dataset name", path.display(), i + 2);
        }
        let size = size_i
            .and_then(|j| f.get(j))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(i as f64);
        out.push(DatasetInfo {
            name,
            size_in_kb: size,
        });
    }
    // Stable sort: the file is already sorted by size; keep its order on ties.
    out.sort_by(|a, b| a.size_in_kb.total_cmp(&b.size_in_kb));
    Ok(out)
}

struct Meta {
    entity: String,
    context: Vec<String>,
    types: HashMap<String, String>,
}

fn read_metadata(dir: &Path, name: &str) -> Result<Meta> {
    let mut meta = Meta {
        entity: "e_id".into(),
        context: vec!["ml_class".into()],
        types: HashMap::new(),
    };
    let path = dir.join(name).join("metadata.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(meta);
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::new(format!("{}: invalid JSON: {e}", path.display())))?;
    let table = v.get("tables").and_then(|t| {
        t.get(name)
            .or_else(|| t.as_object().and_then(|o| o.values().next()))
    });
    if let Some(t) = table {
        if let Some(e) = t.get("entity_columns").and_then(|e| e.as_array()) {
            match e.as_slice() {
                [one] => meta.entity = one.as_str().unwrap_or("e_id").to_owned(),
                [] => {}
                _ => bail!(
                    "{}: only one entity column is supported, got {}",
                    path.display(),
                    e.len()
                ),
            }
        }
        if let Some(c) = t.get("context_columns").and_then(|c| c.as_array()) {
            meta.context = c
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
        }
        if let Some(fields) = t.get("fields").and_then(|f| f.as_object()) {
            for (k, f) in fields {
                if let Some(ty) = f.get("type").and_then(|t| t.as_str()) {
                    meta.types.insert(k.clone(), ty.to_owned());
                }
            }
        }
    }
    Ok(meta)
}

fn is_categorical(meta: &Meta, col: &str) -> bool {
    matches!(
        meta.types.get(col).map(String::as_str),
        Some("categorical" | "boolean")
    )
}

/// Load `<dir>/<name>/<name>.csv` (and its `metadata.json`, if any).
pub fn load_dataset(dir: &Path, name: &str) -> Result<Dataset> {
    if name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("invalid dataset name `{name}`");
    }
    let meta = read_metadata(dir, name)?;
    let path = dir.join(name).join(format!("{name}.csv"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::new(format!(
            "dataset `{name}`: cannot read {}: {}",
            path.display(),
            io_text(&e)
        ))
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("dataset `{name}`: {} is empty", path.display())
    };
    let header: Vec<String> = split_csv_line(header.trim_end_matches('\r'))
        .into_iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let find = |col: &str| header.iter().position(|h| h == col);
    let Some(ent_i) = find(&meta.entity) else {
        bail!(
            "dataset `{name}`: missing entity column `{}` (columns: {})",
            meta.entity,
            header.join(", ")
        )
    };
    let mut ctx_i = Vec::new();
    for c in &meta.context {
        let Some(i) = find(c) else {
            bail!(
                "dataset `{name}`: missing context column `{c}` (columns: {})",
                header.join(", ")
            )
        };
        ctx_i.push(i);
    }
    let data_i: Vec<usize> = (0..header.len())
        .filter(|&i| i != ent_i && !ctx_i.contains(&i))
        .filter(|&i| {
            meta.types
                .get(&header[i])
                .is_none_or(|t| t != "id" && t != "datetime")
        })
        .collect();
    if data_i.is_empty() {
        bail!("dataset `{name}`: no data columns besides the entity and context columns");
    }
    // Context values are read as text first (typed per column afterwards).
    let mut order: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut ctx_text: Vec<Vec<String>> = Vec::new();
    let mut raw: Vec<Vec<Vec<String>>> = Vec::new(); // entity -> rows -> data fields
    for (lineno, line) in lines {
        let f = split_csv_line(line.trim_end_matches('\r'));
        if f.len() != header.len() {
            bail!(
                "dataset `{name}`: line {} has {} fields, the header has {}",
                lineno + 1,
                f.len(),
                header.len()
            );
        }
        let e = f[ent_i].trim().to_owned();
        if e.is_empty() {
            bail!(
                "dataset `{name}`: line {} has an empty entity id",
                lineno + 1
            );
        }
        let k = *index.entry(e.clone()).or_insert_with(|| {
            order.push(e);
            ctx_text.push(ctx_i.iter().map(|&i| f[i].trim().to_owned()).collect());
            raw.push(Vec::new());
            order.len() - 1
        });
        raw[k].push(data_i.iter().map(|&i| f[i].trim().to_owned()).collect());
    }
    if order.is_empty() {
        bail!("dataset `{name}`: no rows");
    }
    // Untyped context columns (no metadata) are categorical unless every value is a number;
    // untyped data columns are numeric.
    let type_col =
        |col: &str, values: &mut dyn Iterator<Item = &String>, infer: bool| -> Result<Kind> {
            let values: Vec<&String> = values.collect();
            let text = || {
                values.iter().any(|v| {
                    !v.is_empty() && !v.eq_ignore_ascii_case("nan") && v.parse::<f64>().is_err()
                })
            };
            if is_categorical(&meta, col) || (infer && !meta.types.contains_key(col) && text()) {
                let mut cats: Vec<String> = Vec::new();
                for v in values.iter().copied() {
                    if !v.is_empty() && !cats.contains(v) {
                        cats.push(v.clone());
                    }
                }
                cats.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
                    (Ok(x), Ok(y)) => x.total_cmp(&y),
                    _ => a.cmp(b),
                });
                Ok(Kind::Categorical(cats))
            } else {
                Ok(Kind::Numeric)
            }
        };
    let encode = |kind: &Kind, col: &str, v: &str, what: &str| -> Result<f64> {
        if v.is_empty() || v.eq_ignore_ascii_case("nan") {
            return Ok(f64::NAN);
        }
        match kind {
            Kind::Numeric => v.parse::<f64>().map_err(|_| {
                Error::new(format!("dataset `{name}`: column `{col}` ({what}) has the non-numeric value `{v}`; mark it categorical in metadata.json if it is"))
            }),
            Kind::Categorical(c) => Ok(c.iter().position(|x| x == v).unwrap_or(0) as f64),
        }
    };
    let mut context_cols = Vec::new();
    for (j, &i) in ctx_i.iter().enumerate() {
        let kind = type_col(&header[i], &mut ctx_text.iter().map(|r| &r[j]), true)?;
        context_cols.push(Column {
            name: header[i].clone(),
            kind,
        });
    }
    let mut data_cols = Vec::new();
    for (j, &i) in data_i.iter().enumerate() {
        let kind = type_col(
            &header[i],
            &mut raw.iter().flat_map(|rows| rows.iter().map(move |r| &r[j])),
            false,
        )?;
        data_cols.push(Column {
            name: header[i].clone(),
            kind,
        });
    }
    let mut seqs = Vec::with_capacity(order.len());
    for (k, entity) in order.into_iter().enumerate() {
        let mut context = Vec::new();
        for (j, c) in context_cols.iter().enumerate() {
            context.push(encode(&c.kind, &c.name, &ctx_text[k][j], "context")?);
        }
        let mut data = Vec::with_capacity(raw[k].len() * data_cols.len());
        for row in &raw[k] {
            for (j, c) in data_cols.iter().enumerate() {
                data.push(encode(&c.kind, &c.name, &row[j], "data")?);
            }
        }
        seqs.push(Sequence {
            entity,
            context,
            data,
            len: raw[k].len(),
        });
    }
    Ok(Dataset {
        name: name.to_owned(),
        entity_col: meta.entity,
        context_cols,
        data_cols,
        seqs,
    })
}

fn cell(col: &Column, v: f64) -> String {
    if v.is_nan() {
        return String::new();
    }
    match &col.kind {
        Kind::Numeric => format!("{v}"),
        Kind::Categorical(c) => quote(c.get(v as usize).map_or("", String::as_str)),
    }
}

/// Write sequences in the dataset layout (entity, context columns, data columns).
pub fn to_csv(ds: &Dataset, seqs: &[Sequence]) -> String {
    let mut s = String::new();
    let mut head = vec![quote(&ds.entity_col)];
    head.extend(ds.context_cols.iter().map(|c| quote(&c.name)));
    head.extend(ds.data_cols.iter().map(|c| quote(&c.name)));
    s.push_str(&head.join(","));
    s.push('\n');
    let d = ds.n_dims();
    for q in seqs {
        let prefix: Vec<String> = std::iter::once(quote(&q.entity))
            .chain(
                ds.context_cols
                    .iter()
                    .zip(&q.context)
                    .map(|(c, &v)| cell(c, v)),
            )
            .collect();
        let prefix = prefix.join(",");
        for t in 0..q.len {
            s.push_str(&prefix);
            for (j, c) in ds.data_cols.iter().enumerate() {
                s.push(',');
                s.push_str(&cell(c, q.data[t * d + j]));
            }
            s.push('\n');
        }
    }
    s
}
