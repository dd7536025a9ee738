//! The metrics, each comparing the real sequences with the synthetic ones.

use crate::data::{Dataset, Kind, Sequence};
use crate::rng::Rng;
use forest::{Forest, Series};
use guest_sdk::{Result, bail};

pub mod forest;
pub mod lstm;

pub const METRIC_NAMES: &[&str] = &[
    "classification_score",
    "classification_score_real",
    "lstm_detection_score",
    "rf_detection_score",
    "sdmetrics_score",
];

const N_TREES: usize = 100;

/// Compute one metric. `real[i]` and `synth[i]` share their entity and context.
pub fn compute(
    name: &str,
    ds: &Dataset,
    real: &[Sequence],
    synth: &[Sequence],
    rng: &mut Rng,
) -> Result<f64> {
    match name {
        "rf_detection_score" => detection(ds, real, synth, rng, Detector::Forest),
        "lstm_detection_score" => detection(ds, real, synth, rng, Detector::Lstm),
        "classification_score" => classification(ds, real, synth, rng, false),
        "classification_score_real" => classification(ds, real, synth, rng, true),
        "sdmetrics_score" => sdmetrics(ds, real, synth),
        other => bail!("unknown metric `{other}`"),
    }
}

/// The data columns of one sequence, concatenated dimension after dimension.
pub fn concat(ds: &Dataset, s: &Sequence) -> Series {
    let d = ds.n_dims();
    let mut out = Vec::with_capacity(s.len * d);
    for j in 0..d {
        out.extend((0..s.len).map(|t| s.data[t * d + j]));
    }
    out
}

/// Shuffle `0..n` and split it 75/25 (the test part rounded up, like scikit-learn).
fn split(n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut idx);
    let n_test = (n as f64 * 0.25).ceil() as usize;
    let train = idx.split_off(n_test);
    (train, idx)
}

enum Detector {
    Forest,
    Lstm,
}

/// 1 − accuracy of a classifier telling real (0) from synthetic (1) sequences.
fn detection(
    ds: &Dataset,
    real: &[Sequence],
    synth: &[Sequence],
    rng: &mut Rng,
    how: Detector,
) -> Result<f64> {
    if real.is_empty() || synth.is_empty() {
        bail!("no sequences to compare");
    }
    let labelled: Vec<(&Sequence, usize)> = real
        .iter()
        .map(|s| (s, 0))
        .chain(synth.iter().map(|s| (s, 1)))
        .collect();
    let (train, test) = split(labelled.len(), rng);
    let acc = match how {
        Detector::Forest => {
            let xs = |ix: &[usize]| -> Vec<Series> {
                ix.iter().map(|&i| concat(ds, labelled[i].0)).collect()
            };
            let ys = |ix: &[usize]| -> Vec<usize> { ix.iter().map(|&i| labelled[i].1).collect() };
            let f = Forest::fit(&xs(&train), &ys(&train), 2, N_TREES, rng);
            f.accuracy(&xs(&test), &ys(&test))
        }
        Detector::Lstm => {
            let pick = |ix: &[usize]| -> (Vec<&Sequence>, Vec<usize>) {
                (
                    ix.iter().map(|&i| labelled[i].0).collect(),
                    ix.iter().map(|&i| labelled[i].1).collect(),
                )
            };
            let (xtr, ytr) = pick(&train);
            let (xte, yte) = pick(&test);
            lstm::detect(ds, real, &xtr, &ytr, &xte, &yte, rng)?
        }
    };
    Ok(1.0 - acc)
}

/// The class of each sequence: the first context column; a numeric one with more than
/// 10 distinct values is cut into 4 quantile bins of the real values.
fn targets(
    ds: &Dataset,
    real: &[Sequence],
    synth: &[Sequence],
) -> Result<(Vec<usize>, Vec<usize>, usize)> {
    let Some(col) = ds.context_cols.first() else {
        bail!("the dataset has no context column to classify")
    };
    let value = |s: &Sequence| s.context[0];
    let classes: Vec<f64> = match &col.kind {
        Kind::Categorical(c) => (0..c.len()).map(|i| i as f64).collect(),
        Kind::Numeric => {
            let mut v: Vec<f64> = real.iter().map(value).filter(|x| !x.is_nan()).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            if v.len() <= 10 {
                v
            } else {
                let mut all: Vec<f64> = real.iter().map(value).filter(|x| !x.is_nan()).collect();
                all.sort_by(f64::total_cmp);
                let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
                let cuts = [q(0.25), q(0.5), q(0.75)];
                let bin = |x: f64| cuts.iter().filter(|&&c| x > c).count();
                let n = 5; // 4 bins + missing
                let f = |s: &Sequence| if value(s).is_nan() { 4 } else { bin(value(s)) };
                return Ok((
                    real.iter().map(f).collect(),
                    synth.iter().map(f).collect(),
                    n,
                ));
            }
        }
    };
    let n = classes.len() + 1; // last class: missing
    let f = |s: &Sequence| {
        let x = value(s);
        if x.is_nan() {
            return n - 1;
        }
        classes.iter().position(|&c| c == x).unwrap_or_else(|| {
            // nearest known value (numeric targets only)
            let mut best = 0;
            for (i, &c) in classes.iter().enumerate() {
                if (c - x).abs() < (classes[best] - x).abs() {
                    best = i;
                }
            }
            best
        })
    };
    Ok((
        real.iter().map(f).collect(),
        synth.iter().map(f).collect(),
        n,
    ))
}

/// Accuracy of a forest trained on synthetic data over that of one trained on real data.
/// `on_real = false` keeps the reference's quirk (the synthetic-trained forest is scored
/// on the synthetic sequences of the test entities).
fn classification(
    ds: &Dataset,
    real: &[Sequence],
    synth: &[Sequence],
    rng: &mut Rng,
    on_real: bool,
) -> Result<f64> {
    if real.len() < 2 || real.len() != synth.len() {
        bail!("need at least 2 entities and one synthetic sequence per real one");
    }
    let (yr, ys, n_classes) = targets(ds, real, synth)?;
    let (train, test) = split(real.len(), rng);
    let xs = |seqs: &[Sequence], ix: &[usize]| -> Vec<Series> {
        ix.iter().map(|&i| concat(ds, &seqs[i])).collect()
    };
    let pick = |y: &[usize], ix: &[usize]| -> Vec<usize> { ix.iter().map(|&i| y[i]).collect() };
    let real_f = Forest::fit(
        &xs(real, &train),
        &pick(&yr, &train),
        n_classes,
        N_TREES,
        rng,
    );
    let real_acc = real_f.accuracy(&xs(real, &test), &pick(&yr, &test));
    let synt_f = Forest::fit(
        &xs(synth, &train),
        &pick(&ys, &train),
        n_classes,
        N_TREES,
        rng,
    );
    let synt_acc = if on_real {
        synt_f.accuracy(&xs(real, &test), &pick(&yr, &test))
    } else {
        synt_f.accuracy(&xs(synth, &test), &pick(&ys, &test))
    };
    if real_acc == 0.0 {
        bail!("the real-data classifier has accuracy 0; the ratio is undefined");
    }
    Ok(synt_acc / real_acc)
}

/// Two-sample Kolmogorov–Smirnov statistic.
pub fn ks(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// Total variation distance between the frequencies of category codes.
pub fn tvd(a: &[f64], b: &[f64], k: usize) -> f64 {
    let mut pa = vec![0.0; k.max(1)];
    let mut pb = vec![0.0; k.max(1)];
    for &x in a {
        pa[(x as usize).min(k.max(1) - 1)] += 1.0 / a.len() as f64;
    }
    for &x in b {
        pb[(x as usize).min(k.max(1) - 1)] += 1.0 / b.len() as f64;
    }
    0.5 * pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>()
}

fn similarity(kind: &Kind, mut a: Vec<f64>, mut b: Vec<f64>) -> Option<f64> {
    a.retain(|x| !x.is_nan());
    b.retain(|x| !x.is_nan());
    match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        (true, false) | (false, true) => Some(0.0),
        _ => Some(match kind {
            Kind::Numeric => 1.0 - ks(&mut a, &mut b),
            Kind::Categorical(c) => 1.0 - tvd(&a, &b, c.len()),
        }),
    }
}

/// Mean of: per data column 1 − KS (numeric) or 1 − TVD (categorical) over all steps'
/// non-missing values; the same per context column over entities; 1 − KS of the
/// sequence lengths; 1 − |missing-rate difference| averaged over data columns.
fn sdmetrics(ds: &Dataset, real: &[Sequence], synth: &[Sequence]) -> Result<f64> {
    let d = ds.n_dims();
    let mut parts = Vec::new();
    let mut miss = Vec::new();
    for (j, col) in ds.data_cols.iter().enumerate() {
        let vals = |seqs: &[Sequence]| -> Vec<f64> {
            seqs.iter()
                .flat_map(|s| s.data.iter().skip(j).step_by(d).copied())
                .collect()
        };
        let (a, b) = (vals(real), vals(synth));
        let rate = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().filter(|x| x.is_nan()).count() as f64 / v.len() as f64
            }
        };
        miss.push(1.0 - (rate(&a) - rate(&b)).abs());
        parts.extend(similarity(&col.kind, a, b));
    }
    for (j, col) in ds.context_cols.iter().enumerate() {
        let vals = |seqs: &[Sequence]| -> Vec<f64> { seqs.iter().map(|s| s.context[j]).collect() };
        parts.extend(similarity(&col.kind, vals(real), vals(synth)));
    }
    let lens = |seqs: &[Sequence]| -> Vec<f64> { seqs.iter().map(|s| s.len as f64).collect() };
    parts.extend(similarity(&Kind::Numeric, lens(real), lens(synth)));
    if !miss.is_empty() {
        parts.push(miss.iter().sum::<f64>() / miss.len() as f64);
    }
    if parts.is_empty() {
        bail!("nothing to compare");
    }
    Ok(parts.iter().sum::<f64>() / parts.len() as f64)
}
