//! The terminal: leaderboard tables and the run's summary.

use super::*;
use std::fmt::Write as _;

/// A metric value: 4 significant decimals, or scientific when tiny/huge.
pub(super) fn fmt_value(v: f64) -> String {
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
pub(super) fn fmt_secs_tick(s: f64) -> String {
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

pub(super) fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// Columns aligned: text left, numbers right (`right[i]`).
pub(super) fn aligned(
    header: &[&str],
    rows: &[Vec<String>],
    right: &[bool],
    indent: &str,
) -> String {
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

pub(super) fn leaderboard_rows(m: &Metric) -> (Vec<&'static str>, Vec<Vec<String>>, Vec<bool>) {
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
pub(super) fn headline(r: &Report) -> String {
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

/// Rows (or models) a run summary shows at most.
pub(super) const SUMMARY_ROWS: usize = 5;
/// Characters a run summary's cell shows at most.
pub(super) const SUMMARY_CELL: usize = 24;

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

pub(super) fn leaderboard_summary(r: &Report) -> String {
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

pub(super) fn first_rows(data: &Data, source: &str, width: usize) -> String {
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

pub(super) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// `s` in at most `n` characters, `…` marking a cut.
pub(super) fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n.saturating_sub(1)) {
        Some((i, _)) if s[i..].chars().nth(1).is_some() => format!("{}…", &s[..i]),
        _ => s.to_owned(),
    }
}
