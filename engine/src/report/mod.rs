//! `engine report RESULTS.csv`: a leaderboard per metric on the terminal, and
//! optionally one self-contained HTML file with hand-written SVG charts.
//!
//! The table is read generically: the *entity* column is `model` if present,
//! else the first text column; the *dataset* column is `dataset` if present,
//! else the next text column (if any); the metrics are the numeric columns
//! ending in `_score` (or those given). A row with a non-empty `error`, or an
//! empty metric cell, counts as a failure for that metric.
//!
//! `data` reads the table, `stats` computes the leaderboards, `text` and
//! `html` render them, `charts` draws the SVG; `provenance` heads the text
//! with what produced the table (`<stem>.meta.json`, if it is there).

mod charts;
mod data;
mod html;
mod provenance;
mod stats;
mod text;

pub use data::{Data, load, parse};
pub use html::{escape, render_html};
pub use provenance::{meta_path, render_provenance};
pub use stats::{Metric, Report, Standing, TimeColumn, analyse};
pub use text::{fmt_secs, render_summary, render_text};

use charts::*;
use html::*;
use text::*;

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
    fn a_table_of_all_distinct_models_and_datasets_is_summed_up_in_linear_work() {
        // 50,000 rows, each its own model and dataset: grouping used to scan
        // the models per row and build a models x datasets matrix (2.5e9
        // cells); now the chart of pairs is left out and the rest is linear.
        let mut csv = String::from("model,dataset,a_score,error\n");
        for i in 0..50_000 {
            csv.push_str(&format!("m{i},d{i},{},\n", i % 7));
        }
        let data = parse(&csv).unwrap();
        let r = analyse(&data, "big.csv", &[]).unwrap();
        assert_eq!(r.entities.len(), 50_000);
        assert!(r.metrics[0].values.is_empty(), "no chart of 2.5e9 pairs");
        let summary = render_summary(&data, "big.csv", 100);
        assert!(summary.contains("49995 more models"), "{summary}");
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
