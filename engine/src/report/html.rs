//! One self-contained HTML page: the tables and the charts.

use super::*;
use std::fmt::Write as _;

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

pub(super) fn html_table(
    header: &[&str],
    rows: &[Vec<String>],
    right: &[bool],
    class: &str,
) -> String {
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
pub(super) fn times_table(r: &Report) -> (Vec<&str>, Vec<Vec<String>>, Vec<bool>) {
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
