//! `engine report RESULTS.csv`: a leaderboard per metric on the terminal, and
//! optionally one self-contained HTML file with hand-written SVG charts.
//!
//! The table is read generically: the *entity* column is `model` if present,
//! else the first text column; the *dataset* column is `dataset` if present,
//! else the next text column (if any); the metrics are the numeric columns
//! ending in `_score` (or those given). A row with a non-empty `error`, or an
//! empty metric cell, counts as a failure for that metric.

use crate::InputError;
use anyhow::Result;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// A CSV table as text cells.
#[derive(Debug, Clone)]
pub struct Data {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Data {
    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
    fn cell(&self, row: usize, col: usize) -> &str {
        self.rows[row].get(col).map_or("", |s| s.trim())
    }
    fn is_numeric(&self, col: usize) -> bool {
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
    fn is_text(&self, col: usize) -> bool {
        (0..self.rows.len()).any(|r| !self.cell(r, col).is_empty()) && !self.is_numeric(col)
    }
    fn number(&self, row: usize, col: usize) -> Option<f64> {
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

/// One entity's standing on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub entity: String,
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Values that counted (rows without error and with a value).
    pub n: usize,
    /// Rows with an error or no value.
    pub failed: usize,
    /// Mean of `<metric>_time`, if that column exists.
    pub time: Option<f64>,
}

/// One metric: the ranking and the value per (entity, dataset).
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub time_column: Option<String>,
    /// Best (highest mean) first; entities without values last.
    pub ranking: Vec<Standing>,
    /// `values[entity][dataset]`: the mean of that pair's successful values.
    pub values: Vec<Vec<Option<f64>>>,
}

/// A time column (e.g. `fit_time`): mean per entity.
#[derive(Debug, Clone)]
pub struct TimeColumn {
    pub name: String,
    pub means: Vec<Option<f64>>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: String,
    pub rows: usize,
    pub failed_rows: usize,
    pub entity_column: String,
    pub dataset_column: Option<String>,
    /// In first-seen order.
    pub entities: Vec<String>,
    pub datasets: Vec<String>,
    pub metrics: Vec<Metric>,
    pub times: Vec<TimeColumn>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The distinct values of a column in first-seen order, and each row's
/// index into them: linear in the rows, however many distinct values.
fn first_seen(data: &Data, col: usize) -> (Vec<String>, Vec<usize>) {
    let mut seen: Vec<String> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut of_row = Vec::with_capacity(data.rows.len());
    for r in 0..data.rows.len() {
        let c = data.cell(r, col);
        let i = *index.entry(c).or_insert_with(|| {
            seen.push(c.to_owned());
            seen.len() - 1
        });
        of_row.push(i);
    }
    (seen, of_row)
}

/// Most model × dataset cells a chart is drawn for; past it the chart of
/// pairs is left out (the leaderboards are complete).
const CHART_CELLS_MAX: usize = 100_000;

/// Work out the columns and compute the leaderboards.
pub fn analyse(data: &Data, source: &str, metrics: &[String]) -> Result<Report, InputError> {
    if data.rows.is_empty() {
        return Err(InputError::msg(format!("`{source}` has no rows")));
    }
    let error_col = data.col("error");
    let text_cols: Vec<usize> = (0..data.header.len())
        .filter(|&c| Some(c) != error_col && data.is_text(c))
        .collect();
    let entity_col = match data.col("model") {
        Some(c) => c,
        None => *text_cols.first().ok_or_else(|| {
            InputError::msg(format!(
                "`{source}` has no `model` column and no text column to group rows by"
            ))
        })?,
    };
    let dataset_col = data
        .col("dataset")
        .filter(|&c| c != entity_col)
        .or_else(|| text_cols.iter().copied().find(|&c| c != entity_col));

    let metric_cols: Vec<usize> = if metrics.is_empty() {
        let found: Vec<usize> = (0..data.header.len())
            .filter(|&c| data.header[c].ends_with("_score") && data.is_numeric(c))
            .collect();
        if found.is_empty() {
            let numeric: Vec<String> = (0..data.header.len())
                .filter(|&c| data.is_numeric(c))
                .map(|c| format!("`{}`", data.header[c]))
                .collect();
            return Err(InputError::msg(format!(
                "`{source}` has no metric columns (numeric columns ending in `_score`); \
                 pass `--metric COLUMN` (numeric columns: {})",
                if numeric.is_empty() {
                    "none".to_owned()
                } else {
                    numeric.join(", ")
                }
            )));
        }
        found
    } else {
        let mut cols = Vec::new();
        for m in metrics {
            let Some(c) = data.col(m) else {
                return Err(InputError::msg(format!(
                    "`{source}` has no column `{m}`; its columns: {}",
                    data.header.join(", ")
                )));
            };
            if data.is_text(c) {
                return Err(InputError::msg(format!(
                    "the column `{m}` of `{source}` is not numeric"
                )));
            }
            cols.push(c);
        }
        cols
    };

    let (entities, entity_rows) = first_seen(data, entity_col);
    let (datasets, dataset_rows) = match dataset_col {
        Some(c) => first_seen(data, c),
        None => (vec![String::new()], vec![0; data.rows.len()]),
    };
    let entity_of = |r: usize| entity_rows[r];
    let dataset_of = |r: usize| dataset_rows[r];
    let chart = entities.len().saturating_mul(datasets.len()) <= CHART_CELLS_MAX;
    let failed_row = |r: usize| error_col.is_some_and(|c| !data.cell(r, c).is_empty());

    let mut out_metrics = Vec::new();
    for &mc in &metric_cols {
        let name = data.header[mc].clone();
        let time_column = data
            .col(&format!("{name}_time"))
            .filter(|&c| data.is_numeric(c));
        let mut per_entity: Vec<Vec<f64>> = vec![Vec::new(); entities.len()];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); entities.len()];
        let mut failed = vec![0usize; entities.len()];
        // (sum, count) per model × dataset pair that has values.
        let mut pairs: HashMap<(usize, usize), (f64, usize)> = HashMap::new();
        for r in 0..data.rows.len() {
            let e = entity_of(r);
            match data.number(r, mc).filter(|_| !failed_row(r)) {
                Some(v) => {
                    per_entity[e].push(v);
                    let p = pairs.entry((e, dataset_of(r))).or_default();
                    *p = (p.0 + v, p.1 + 1);
                    if let Some(t) = time_column.and_then(|tc| data.number(r, tc)) {
                        times[e].push(t);
                    }
                }
                None => failed[e] += 1,
            }
        }
        let mut ranking: Vec<Standing> = entities
            .iter()
            .enumerate()
            .map(|(e, entity)| {
                let v = &per_entity[e];
                let m = mean(v);
                let sd = m.filter(|_| v.len() > 1).map(|m| {
                    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
                });
                Standing {
                    entity: entity.clone(),
                    mean: m,
                    sd,
                    min: v.iter().copied().reduce(f64::min),
                    max: v.iter().copied().reduce(f64::max),
                    n: v.len(),
                    failed: failed[e],
                    time: mean(&times[e]),
                }
            })
            .collect();
        // Highest mean first; stable, so ties keep the table's order.
        ranking.sort_by(|a, b| match (a.mean, b.mean) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        let values = if chart {
            (0..entities.len())
                .map(|e| {
                    (0..datasets.len())
                        .map(|d| pairs.get(&(e, d)).map(|(sum, n)| sum / *n as f64))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        out_metrics.push(Metric {
            name,
            time_column: time_column.map(|c| data.header[c].clone()),
            ranking,
            values,
        });
    }

    let times = ["fit_time", "sample_time"]
        .iter()
        .filter_map(|&name| {
            let c = data.col(name).filter(|&c| data.is_numeric(c))?;
            let mut per: Vec<Vec<f64>> = vec![Vec::new(); entities.len()];
            for r in 0..data.rows.len() {
                if let Some(v) = data.number(r, c).filter(|_| !failed_row(r)) {
                    per[entity_of(r)].push(v);
                }
            }
            Some(TimeColumn {
                name: name.to_owned(),
                means: per.iter().map(|v| mean(v)).collect(),
            })
        })
        .collect();

    Ok(Report {
        source: source.to_owned(),
        rows: data.rows.len(),
        failed_rows: (0..data.rows.len()).filter(|&r| failed_row(r)).count(),
        entity_column: data.header[entity_col].clone(),
        dataset_column: dataset_col.map(|c| data.header[c].clone()),
        entities,
        datasets,
        metrics: out_metrics,
        times,
    })
}

// ---------------------------------------------------------------- text

/// A metric value: 4 significant decimals, or scientific when tiny/huge.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// Seconds, with a unit that keeps 3 significant digits readable.
pub fn fmt_secs(s: f64) -> String {
    let a = s.abs();
    if a == 0.0 {
        "0s".into()
    } else if a < 1e-3 {
        format!("{:.1}µs", s * 1e6)
    } else if a < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else if a < 120.0 {
        format!("{s:.2}s")
    } else {
        format!("{:.1}min", s / 60.0)
    }
}

/// [`fmt_secs`] without trailing zeros, for axis ticks (`100s`, `10ms`).
fn fmt_secs_tick(s: f64) -> String {
    let t = fmt_secs(s);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = if num.contains('.') {
        num.trim_end_matches('0').trim_end_matches('.')
    } else {
        num
    };
    format!("{num}{unit}")
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// Columns aligned: text left, numbers right (`right[i]`).
fn aligned(header: &[&str], rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut s = indent.to_owned();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn leaderboard_rows(m: &Metric) -> (Vec<&'static str>, Vec<Vec<String>>, Vec<bool>) {
    let mut header = vec!["#", "model", "mean", "± sd", "min", "max", "n", "failed"];
    let mut right = vec![true, false, true, true, true, true, true, true];
    if m.time_column.is_some() {
        header.push("time");
        right.push(true);
    }
    let rows = m
        .ranking
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = vec![
                if s.mean.is_some() {
                    (i + 1).to_string()
                } else {
                    "-".into()
                },
                s.entity.clone(),
                opt(s.mean, fmt_value),
                opt(s.sd, fmt_value),
                opt(s.min, fmt_value),
                opt(s.max, fmt_value),
                s.n.to_string(),
                s.failed.to_string(),
            ];
            if m.time_column.is_some() {
                r.push(opt(s.time, fmt_secs));
            }
            r
        })
        .collect();
    (header, rows, right)
}

/// The terminal leaderboard.
pub fn render_text(r: &Report) -> String {
    let mut out = headline(r);
    for m in &r.metrics {
        let _ = writeln!(
            out,
            "\n{} (mean over {}s, higher first)",
            m.name,
            r.dataset_column.as_deref().unwrap_or("row")
        );
        let (mut header, rows, right) = leaderboard_rows(m);
        header[1] = &r.entity_column;
        out.push_str(&aligned(&header, &rows, &right, "  "));
    }
    if !r.times.is_empty() {
        let _ = writeln!(out, "\ntimes (mean over successful rows)");
        let (header, rows, right) = times_table(r);
        out.push_str(&aligned(&header, &rows, &right, "  "));
    }
    out
}

/// `SOURCE: 12 rows, 4 models, 3 datasets, 0 failed rows`.
fn headline(r: &Report) -> String {
    format!(
        "{}: {} {}, {} {}{}, {} failed {}\n",
        r.source,
        r.rows,
        plural(r.rows, "row"),
        r.entities.len(),
        plural(r.entities.len(), &r.entity_column),
        r.dataset_column
            .as_ref()
            .map(|d| format!(", {} {}", r.datasets.len(), plural(r.datasets.len(), d)))
            .unwrap_or_default(),
        r.failed_rows,
        plural(r.failed_rows, "row")
    )
}

// ---------------------------------------------------------------- run summary

/// Rows (or models) a run summary shows at most.
const SUMMARY_ROWS: usize = 5;
/// Characters a run summary's cell shows at most.
const SUMMARY_CELL: usize = 24;

/// A few lines summing up a result table, for the end of `engine run`: with
/// metric columns, the leaderboards in one table (a row per model, in the
/// first metric's order: its mean over datasets and rank per metric); else
/// the table's first rows. `width` bounds the lines (terminal columns).
pub fn render_summary(data: &Data, source: &str, width: usize) -> String {
    match analyse(data, source, &[]) {
        Ok(r) => leaderboard_summary(&r),
        Err(_) => first_rows(data, source, width),
    }
}

fn leaderboard_summary(r: &Report) -> String {
    let mut header: Vec<&str> = vec![&r.entity_column];
    header.extend(
        r.metrics
            .iter()
            .map(|m| m.name.strip_suffix("_score").unwrap_or(&m.name)),
    );
    header.push("failed");
    let right: Vec<bool> = (0..header.len()).map(|i| i > 0).collect();
    let Some(first) = r.metrics.first() else {
        return headline(r);
    };
    let rows: Vec<Vec<String>> = first
        .ranking
        .iter()
        .take(SUMMARY_ROWS)
        .map(|entity| {
            let mut row = vec![entity.entity.clone()];
            let mut failed = 0;
            for m in &r.metrics {
                let found = m
                    .ranking
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.entity == entity.entity);
                row.push(match found {
                    Some((rank, s)) => {
                        failed = failed.max(s.failed);
                        s.mean
                            .map_or("-".into(), |v| format!("{} ({})", fmt_value(v), rank + 1))
                    }
                    None => "-".into(),
                });
            }
            row.push(failed.to_string());
            row
        })
        .collect();
    let mut out = headline(r);
    let _ = writeln!(
        out,
        "mean over {}s (rank), higher is better:",
        r.dataset_column.as_deref().unwrap_or("row")
    );
    out.push_str(&aligned(&header, &rows, &right, "  "));
    let more = r.entities.len().saturating_sub(SUMMARY_ROWS);
    if more > 0 {
        let _ = writeln!(out, "  … {more} more {}", plural(more, &r.entity_column));
    }
    out
}

fn first_rows(data: &Data, source: &str, width: usize) -> String {
    let error_col = data.col("error");
    let failed: Vec<usize> = (0..data.rows.len())
        .filter(|&r| error_col.is_some_and(|c| !data.cell(r, c).is_empty()))
        .collect();
    let shown = data.rows.len().min(SUMMARY_ROWS);
    // Floats as in the leaderboards (`0.8333`, not `0.8333333333333335`).
    let show = |r: usize, c: usize, cap: usize| {
        let text = data.cell(r, c);
        match text.parse::<f64>() {
            Ok(v) if text.contains(['.', 'e', 'E']) && v.is_finite() => fmt_value(v),
            _ => cut(text, cap),
        }
    };
    // Columns while they fit, each cut to `SUMMARY_CELL` characters but the
    // `error` column (the last), which gets the rest of the line if some row failed.
    let mut cols: Vec<(usize, usize)> = Vec::new();
    let mut used = 2;
    for c in 0..data.header.len() {
        if Some(c) == error_col && failed.is_empty() {
            continue;
        }
        let cap = if Some(c) == error_col {
            width.saturating_sub(used).max(SUMMARY_CELL)
        } else {
            SUMMARY_CELL
        };
        let w = (0..shown)
            .map(|r| show(r, c, cap).chars().count())
            .chain([cut(&data.header[c], cap).chars().count()])
            .max()
            .unwrap_or(0);
        if used + w > width && !cols.is_empty() {
            break;
        }
        used += w + 2;
        cols.push((c, cap));
    }
    let hidden =
        data.header.len() - cols.len() - usize::from(error_col.is_some() && failed.is_empty());
    let header: Vec<String> = cols
        .iter()
        .map(|&(c, cap)| cut(&data.header[c], cap))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let right: Vec<bool> = cols.iter().map(|&(c, _)| data.is_numeric(c)).collect();
    let rows: Vec<Vec<String>> = (0..shown)
        .map(|r| cols.iter().map(|&(c, cap)| show(r, c, cap)).collect())
        .collect();
    let mut out = format!(
        "{source}: {} {}, {} failed {}{}\n",
        data.rows.len(),
        plural(data.rows.len(), "row"),
        failed.len(),
        plural(failed.len(), "row"),
        if hidden > 0 {
            format!(" ({hidden} columns not shown)")
        } else {
            String::new()
        }
    );
    if shown > 0 {
        out.push_str(&aligned(&header, &rows, &right, "  "));
    }
    if data.rows.len() > shown {
        let more = data.rows.len() - shown;
        let _ = writeln!(out, "  … {more} more {}", plural(more, "row"));
    }
    if let (Some(&r), Some(c)) = (failed.iter().find(|&&r| r >= shown), error_col) {
        let line = format!("  first failure (row {}): {}", r + 1, data.cell(r, c));
        let _ = writeln!(out, "{}", cut(&line, width));
    }
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// `s` in at most `n` characters, `…` marking a cut.
fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n.saturating_sub(1)) {
        Some((i, _)) if s[i..].chars().nth(1).is_some() => format!("{}…", &s[..i]),
        _ => s.to_owned(),
    }
}

// ---------------------------------------------------------------- HTML + SVG

/// Escape text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

const SVG_NS: &str = "http://www.w3.org/2000/svg";

/// Round tick steps (1, 2, 5 × 10^k) covering `lo..hi`.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= target as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last.max(first + 1))
        .map(|k| k as f64 * step)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_owned() }
}

/// An estimate of a label's width in pixels at `size` px.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

/// A grouped bar chart: one group per entity, one bar per series.
/// `values[group][series]`; `log` for a logarithmic y axis (positive values).
struct BarChart<'a> {
    title: &'a str,
    y_label: &'a str,
    groups: &'a [String],
    series: &'a [String],
    values: &'a [Vec<Option<f64>>],
    log: bool,
    fmt: fn(f64) -> String,
}

fn bar_chart(c: &BarChart) -> String {
    let width = 900.0;
    let (left, right, top) = (70.0, 20.0, 40.0);
    let plot_w = width - left - right;
    let group_w = plot_w / c.groups.len().max(1) as f64;
    let longest = c
        .groups
        .iter()
        .map(|g| text_width(g, 12.0))
        .fold(0.0, f64::max);
    let rotate = longest > group_w - 8.0;
    let label_h = if rotate { longest * 0.71 + 20.0 } else { 24.0 };
    let legend = c.series.len() > 1 || c.series.first().is_some_and(|s| !s.is_empty());
    let legend_rows = if legend {
        let mut rows = 1;
        let mut x = 0.0;
        for s in c.series {
            let w = text_width(s, 12.0) + 34.0;
            if x + w > plot_w && x > 0.0 {
                rows += 1;
                x = 0.0;
            }
            x += w;
        }
        rows
    } else {
        0
    };
    let plot_h = 280.0;
    let legend_top = top + plot_h + label_h + 16.0;
    let height = legend_top + legend_rows as f64 * 20.0 + 8.0;

    let all: Vec<f64> = c.values.iter().flatten().flatten().copied().collect();
    // The y range and its ticks; `to_y` maps a value to a pixel.
    let (ticks, lo, hi): (Vec<f64>, f64, f64) = if c.log {
        let pos: Vec<f64> = all.iter().copied().filter(|v| *v > 0.0).collect();
        let min = pos.iter().copied().fold(f64::INFINITY, f64::min);
        let max = pos.iter().copied().fold(0.0, f64::max);
        let (a, b) = if pos.is_empty() {
            (0, 1)
        } else {
            (min.log10().floor() as i32, max.log10().ceil() as i32)
        };
        let b = if b <= a { a + 1 } else { b };
        (
            (a..=b).map(|e| 10f64.powi(e)).collect(),
            f64::from(a),
            f64::from(b),
        )
    } else {
        let min = all.iter().copied().fold(0.0, f64::min);
        let max = all.iter().copied().fold(0.0, f64::max);
        let max = if max <= min { min + 1.0 } else { max };
        let t = nice_ticks(min, max, 6);
        let (lo, hi) = (t[0], *t.last().unwrap_or(&max));
        (t, lo, hi)
    };
    let to_y = |v: f64| {
        let v = if c.log {
            v.max(10f64.powf(lo)).log10()
        } else {
            v
        };
        top + plot_h - (v - lo) / (hi - lo) * plot_h
    };

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="{SVG_NS}" viewBox="0 0 {width} {height:.0}" width="{width}" height="{height:.0}" role="img" aria-label="{}" font-family="system-ui, sans-serif" font-size="12">"#,
        escape(c.title)
    );
    let _ = write!(
        s,
        r##"<text x="{left}" y="22" font-size="15" font-weight="600" fill="#222">{}</text>"##,
        escape(c.title)
    );
    // Grid lines and tick labels.
    for &t in &ticks {
        let y = to_y(t);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            escape(&(c.fmt)(t))
        );
    }
    // The y axis title, rotated.
    let _ = write!(
        s,
        r##"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle" fill="#444">{}</text>"##,
        top + plot_h / 2.0,
        escape(c.y_label)
    );
    // Bars.
    let n = c.series.len().max(1) as f64;
    let inner = group_w * 0.8;
    let bar_w = inner / n;
    let base = if c.log { top + plot_h } else { to_y(0.0) };
    for (g, group) in c.groups.iter().enumerate() {
        let gx = left + g as f64 * group_w + (group_w - inner) / 2.0;
        for (k, series) in c.series.iter().enumerate() {
            let x = gx + k as f64 * bar_w;
            let color = PALETTE[k % PALETTE.len()];
            let tip = if series.is_empty() {
                escape(group)
            } else {
                format!("{} · {}", escape(group), escape(series))
            };
            match c.values.get(g).and_then(|v| v.get(k)).copied().flatten() {
                Some(v) => {
                    let y = to_y(v);
                    let (y0, h) = if y < base {
                        (y, base - y)
                    } else {
                        (base, y - base)
                    };
                    let _ = write!(
                        s,
                        r#"<rect x="{:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{tip}: {}</title></rect>"#,
                        x + 1.0,
                        (bar_w - 2.0).max(1.0),
                        h.max(0.5),
                        escape(&(c.fmt)(v))
                    );
                }
                None => {
                    // No value (failed or missing): a cross on the baseline.
                    let _ = write!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#c0392b" font-weight="700">×<title>{tip}: failed or missing</title></text>"##,
                        x + bar_w / 2.0,
                        base - 4.0
                    );
                }
            }
        }
        // The group's label.
        let cx = left + (g as f64 + 0.5) * group_w;
        let ly = top + plot_h + 16.0;
        if rotate {
            let _ = write!(
                s,
                r##"<text transform="translate({cx:.1} {ly:.1}) rotate(-40)" text-anchor="end" fill="#222">{}</text>"##,
                escape(group)
            );
        } else {
            let _ = write!(
                s,
                r##"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" fill="#222">{}</text>"##,
                escape(group)
            );
        }
    }
    // Axes.
    let _ = write!(
        s,
        r##"<line x1="{left}" x2="{left}" y1="{top}" y2="{:.1}" stroke="#555"/><line x1="{left}" x2="{:.1}" y1="{base:.1}" y2="{base:.1}" stroke="#555"/>"##,
        top + plot_h,
        left + plot_w
    );
    // Legend.
    if legend {
        let (mut x, mut y) = (left, legend_top);
        for (k, series) in c.series.iter().enumerate() {
            let w = text_width(series, 12.0) + 34.0;
            if x + w > left + plot_w && x > left {
                x = left;
                y += 20.0;
            }
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
                y - 10.0,
                PALETTE[k % PALETTE.len()],
                x + 17.0,
                y,
                escape(series)
            );
            x += w;
        }
    }
    s.push_str("</svg>");
    s
}

fn html_table(header: &[&str], rows: &[Vec<String>], right: &[bool], class: &str) -> String {
    let mut s = format!("<table class={class}><thead><tr>");
    for (h, r) in header.iter().zip(right) {
        let _ = write!(
            s,
            "<th{}>{}</th>",
            if *r { " class=num" } else { "" },
            escape(h)
        );
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for (c, r) in row.iter().zip(right) {
            let _ = write!(
                s,
                "<td{}>{}</td>",
                if *r { " class=num" } else { "" },
                escape(c)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// One self-contained HTML page: no scripts, no fetches.
pub fn render_html(r: &Report) -> String {
    let mut s = String::new();
    let title = format!("Results: {}", r.source);
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 940px; margin: 24px auto; padding: 0 16px; line-height: 1.4; }}
h1 {{ font-size: 1.4em; margin-bottom: 4px; }} h2 {{ font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
p.meta {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }}
th {{ background: #f6f6f6; }} .num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.board tbody tr:first-child td {{ font-weight: 600; }}
svg {{ max-width: 100%; height: auto; display: block; }}
</style></head><body>
<h1>{}</h1>
"#,
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        s,
        "<p class=meta>{} rows · {} {}s{} · {} failed rows. Metrics: higher is better; × marks a failed or missing value.</p>",
        r.rows,
        r.entities.len(),
        escape(&r.entity_column),
        r.dataset_column
            .as_ref()
            .map(|d| format!(" · {} {}s", r.datasets.len(), escape(d)))
            .unwrap_or_default(),
        r.failed_rows
    );
    let series: Vec<String> = if r.dataset_column.is_some() {
        r.datasets.clone()
    } else {
        vec![String::new()]
    };
    for m in &r.metrics {
        let _ = writeln!(s, "<h2>{}</h2>", escape(&m.name));
        let (mut header, rows, right) = leaderboard_rows(m);
        header[1] = &r.entity_column;
        s.push_str(&html_table(&header, &rows, &right, "board"));
        s.push('\n');
        let chart_title = match &r.dataset_column {
            Some(d) => format!("{} per {} and {d}", m.name, r.entity_column),
            None => format!("{} per {}", m.name, r.entity_column),
        };
        s.push_str(&bar_chart(&BarChart {
            title: &chart_title,
            y_label: &m.name,
            groups: &r.entities,
            series: &series,
            values: &m.values,
            log: false,
            fmt: fmt_tick,
        }));
        s.push('\n');
    }
    if !r.times.is_empty() {
        let _ = writeln!(s, "<h2>Times</h2>");
        let (header, rows, right) = times_table(r);
        s.push_str(&html_table(&header, &rows, &right, "times"));
        s.push('\n');
        let values: Vec<Vec<Option<f64>>> = (0..r.entities.len())
            .map(|e| r.times.iter().map(|t| t.means[e]).collect())
            .collect();
        let pos: Vec<f64> = values
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = pos.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = pos.iter().copied().fold(0.0, f64::max);
        let log = !pos.is_empty() && hi / lo > 100.0;
        let names: Vec<String> = r.times.iter().map(|t| t.name.clone()).collect();
        let title = format!(
            "Mean times per {}{}",
            r.entity_column,
            if log { " (log scale)" } else { "" }
        );
        s.push_str(&bar_chart(&BarChart {
            title: &title,
            y_label: "seconds",
            groups: &r.entities,
            series: &names,
            values: &values,
            log,
            fmt: fmt_secs_tick,
        }));
        s.push('\n');
    }
    s.push_str("</body></html>\n");
    s
}

/// The times table: one row per entity, one column per time (mean seconds).
fn times_table(r: &Report) -> (Vec<&str>, Vec<Vec<String>>, Vec<bool>) {
    let mut header: Vec<&str> = vec![&r.entity_column];
    header.extend(r.times.iter().map(|t| t.name.as_str()));
    let mut right = vec![false];
    right.extend(r.times.iter().map(|_| true));
    let rows = r
        .entities
        .iter()
        .enumerate()
        .map(|(e, name)| {
            let mut row = vec![name.clone()];
            row.extend(r.times.iter().map(|t| opt(t.means[e], fmt_secs)));
            row
        })
        .collect();
    (header, rows, right)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "model,dataset,fit_time,sample_time,a_score,a_score_time,b_score,note,error\n\
        Good,d1,1.0,0.01,0.9,0.5,1,x,\n\
        Good,d2,3.0,0.03,0.7,0.5,2,x,\n\
        Bad,d1,0.001,0.0001,0.1,0.1,,x,\n\
        Bad,d2,,,,,,x,trap: oops <b>\n\
        Mid,d1,0.5,0.005,0.5,0.2,3,x,\n\
        Mid,d2,0.5,0.005,0.6,0.2,4,x,\n";

    fn report() -> Report {
        analyse(&parse(CSV).unwrap(), "t.csv", &[]).unwrap()
    }

    #[test]
    fn finds_columns_and_ranks() {
        let r = report();
        assert_eq!(r.entity_column, "model");
        assert_eq!(r.dataset_column.as_deref(), Some("dataset"));
        assert_eq!(r.datasets, ["d1", "d2"]);
        let names: Vec<&str> = r.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a_score", "b_score"]);
        let a = &r.metrics[0];
        let order: Vec<&str> = a.ranking.iter().map(|s| s.entity.as_str()).collect();
        assert_eq!(order, ["Good", "Mid", "Bad"]);
        assert_eq!(a.ranking[0].n, 2);
        assert!((a.ranking[0].mean.unwrap() - 0.8).abs() < 1e-12);
        assert!((a.ranking[0].sd.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(a.ranking[2].failed, 1);
        assert_eq!(a.ranking[2].sd, None);
        assert_eq!(a.time_column.as_deref(), Some("a_score_time"));
        // b_score: Bad has no values at all and comes last.
        let b = &r.metrics[1];
        assert_eq!(b.ranking[0].entity, "Mid");
        assert_eq!(b.ranking[2].entity, "Bad");
        assert_eq!(b.ranking[2].mean, None);
        assert_eq!(b.ranking[2].failed, 2);
        assert_eq!(r.failed_rows, 1);
        assert_eq!(r.times.len(), 2);
    }

    #[test]
    fn text_is_aligned() {
        let t = render_text(&report());
        assert!(
            t.contains("t.csv: 6 rows, 3 models, 2 datasets, 1 failed row"),
            "{t}"
        );
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("Good") || l.contains("Bad"))
            .collect();
        assert!(lines[0].starts_with("  1  Good"), "{t}");
        // Every leaderboard line of a table has the same length up to its last column.
        let table: Vec<&str> = t.lines().skip(3).take(4).collect();
        let widths: Vec<usize> = table.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{t}");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = render_html(&report());
        assert!(h.contains("<svg"));
        assert!(!h.contains("<b>"), "unescaped CSV text");
        assert!(!h.contains("<script"));
        assert_eq!(h.matches("http").count(), h.matches(SVG_NS).count());
        // The times span four orders of magnitude: log scale.
        assert!(h.contains("(log scale)"));
    }

    #[test]
    fn generic_tables_and_errors() {
        let d = parse("name,size,speed\na,1,2.5\nb,2,3.5\n").unwrap();
        let e = analyse(&d, "x.csv", &[]).unwrap_err().to_string();
        assert!(e.contains("`size`, `speed`"), "{e}");
        let r = analyse(&d, "x.csv", &["speed".into()]).unwrap();
        assert_eq!(r.entity_column, "name");
        assert_eq!(r.dataset_column, None);
        assert_eq!(r.metrics[0].ranking[0].entity, "b");
        assert!(render_html(&r).contains("<svg"));
        let e = analyse(&d, "x.csv", &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column `nope`"), "{e}");
    }

    #[test]
    fn run_summary_is_one_leaderboard_table() {
        let s = render_summary(&parse(CSV).unwrap(), "t.csv", 100);
        assert_eq!(
            s,
            "t.csv: 6 rows, 3 models, 2 datasets, 1 failed row\n\
             mean over datasets (rank), higher is better:\n\
             \x20 model           a           b  failed\n\
             \x20 Good   0.8000 (1)  1.5000 (2)       0\n\
             \x20 Mid    0.5500 (2)  3.5000 (1)       0\n\
             \x20 Bad    0.1000 (3)           -       2\n"
        );
    }

    #[test]
    fn run_summary_of_a_generic_table_shows_its_first_rows() {
        let mut csv = String::from("name,ratio,note,error\n");
        for i in 0..7 {
            let error = if i == 6 {
                "timeout: the shard ran past `limits.timeout`"
            } else {
                ""
            };
            csv.push_str(&format!(
                "n{i},{:?},{},{error}\n",
                1.0 / 3.0 * f64::from(i),
                "x".repeat(30)
            ));
        }
        let s = render_summary(&parse(&csv).unwrap(), "out.csv", 100);
        assert_eq!(
            s,
            "out.csv: 7 rows, 1 failed row\n\
             \x20 name   ratio  note                      error\n\
             \x20 n0    0.0000  xxxxxxxxxxxxxxxxxxxxxxx…\n\
             \x20 n1    0.3333  xxxxxxxxxxxxxxxxxxxxxxx…\n\
             \x20 n2    0.6667  xxxxxxxxxxxxxxxxxxxxxxx…\n\
             \x20 n3    1.0000  xxxxxxxxxxxxxxxxxxxxxxx…\n\
             \x20 n4    1.3333  xxxxxxxxxxxxxxxxxxxxxxx…\n\
             \x20 … 2 more rows\n\
             \x20 first failure (row 7): timeout: the shard ran past `limits.timeout`\n"
        );
        // Narrow: the columns that do not fit are left out, and said so.
        let s = render_summary(&parse(&csv).unwrap(), "out.csv", 20);
        assert!(
            s.starts_with("out.csv: 7 rows, 1 failed row (2 columns not shown)\n  name   ratio\n"),
            "{s}"
        );
        assert!(s.lines().skip(1).all(|l| l.chars().count() <= 20), "{s}");
    }

    #[test]
    fn ticks() {
        let t: Vec<String> = nice_ticks(0.0, 1.0, 6).into_iter().map(fmt_tick).collect();
        assert_eq!(t, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t: Vec<String> = nice_ticks(-0.3, 2.0, 6).into_iter().map(fmt_tick).collect();
        assert_eq!(t, ["-0.5", "0", "0.5", "1", "1.5", "2"]);
        let t = nice_ticks(0.0, 2.25, 6);
        assert!(*t.last().unwrap() >= 2.25, "{t:?}");
        assert_eq!(fmt_secs(0.0005), "500.0µs");
        assert_eq!(fmt_secs(2.5), "2.50s");
        assert_eq!(fmt_secs_tick(100.0), "100s");
        assert_eq!(fmt_secs_tick(1e-5), "10µs");
        assert_eq!(fmt_secs_tick(0.1), "100ms");
    }
}
