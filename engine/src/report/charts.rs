//! Hand-written SVG bar charts (grouped bars, linear or log axis).

use super::*;
use std::fmt::Write as _;

pub(super) const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

pub(super) const SVG_NS: &str = "http://www.w3.org/2000/svg";

/// Round tick steps (1, 2, 5 × 10^k) covering `lo..hi`.
pub(super) fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
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

pub(super) fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_owned() }
}

/// An estimate of a label's width in pixels at `size` px.
pub(super) fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

/// A grouped bar chart: one group per entity, one bar per series.
/// `values[group][series]`; `log` for a logarithmic y axis (positive values).
pub(super) struct BarChart<'a> {
    pub(super) title: &'a str,
    pub(super) y_label: &'a str,
    pub(super) groups: &'a [String],
    pub(super) series: &'a [String],
    pub(super) values: &'a [Vec<Option<f64>>],
    pub(super) log: bool,
    pub(super) fmt: fn(f64) -> String,
}

pub(super) fn bar_chart(c: &BarChart) -> String {
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
