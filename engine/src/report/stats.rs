//! Leaderboards: per metric, each entity's mean over datasets and its spread.

use super::*;
use crate::InputError;
use std::collections::HashMap;

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

pub(super) fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The distinct values of a column in first-seen order, and each row's
/// index into them: linear in the rows, however many distinct values.
pub(super) fn first_seen(data: &Data, col: usize) -> (Vec<String>, Vec<usize>) {
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
pub(super) const CHART_CELLS_MAX: usize = 100_000;

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
