//! The LSTM detector: LSTM(hidden 32) over the steps, a linear layer on the state at each
//! sequence's last step → real/synthetic logits; full-batch Adam (lr 1e-2) on the
//! cross-entropy for `EPOCHS` epochs.

use crate::data::{Dataset, Sequence};
use crate::models::nn::{Adam, F, Linear, Lstm, LstmTrace, Param};
use crate::rng::Rng;
use guest_sdk::{Result, bail};

const HIDDEN: usize = 32;
const EPOCHS: usize = 128;

/// Per-column standardisation from the real sequences (missing → 0).
fn scaler(ds: &Dataset, real: &[Sequence]) -> Vec<(f64, f64)> {
    let d = ds.n_dims();
    (0..d)
        .map(|j| {
            let v: Vec<f64> = real
                .iter()
                .flat_map(|s| s.data.iter().skip(j).step_by(d).copied())
                .filter(|x| !x.is_nan())
                .collect();
            if v.is_empty() {
                return (0.0, 1.0);
            }
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt();
            (m, if sd > 1e-12 { sd } else { 1.0 })
        })
        .collect()
}

/// Step-major input tensor `[T·B × D]` and each sequence's last step.
fn tensor(seqs: &[&Sequence], d: usize, sc: &[(f64, f64)]) -> (Vec<F>, usize, Vec<usize>) {
    let steps = seqs.iter().map(|s| s.len).max().unwrap_or(0).max(1);
    let b = seqs.len();
    let mut x = vec![0.0; steps * b * d];
    for (i, s) in seqs.iter().enumerate() {
        for t in 0..s.len {
            for j in 0..d {
                let v = s.data[t * d + j];
                if !v.is_nan() {
                    x[(t * b + i) * d + j] = ((v - sc[j].0) / sc[j].1) as F;
                }
            }
        }
    }
    (x, steps, seqs.iter().map(|s| s.len.max(1) - 1).collect())
}

pub fn detect(
    ds: &Dataset,
    real: &[Sequence],
    xtr: &[&Sequence],
    ytr: &[usize],
    xte: &[&Sequence],
    yte: &[usize],
    rng: &mut Rng,
) -> Result<f64> {
    if xtr.is_empty() || xte.is_empty() {
        bail!("not enough sequences for a train/test split");
    }
    let d = ds.n_dims();
    let sc = scaler(ds, real);
    let mut lstm = Lstm::new(d, HIDDEN, rng);
    let mut head = Linear::new(HIDDEN, 2, rng);
    let mut adam = Adam::new(1e-2);
    let (x, steps, last) = tensor(xtr, d, &sc);
    let b = xtr.len();
    let mut tr = LstmTrace::default();
    let mut hl = vec![0.0; b * HIDDEN];
    let mut logits = vec![0.0; b * 2];
    let mut dl = vec![0.0; b * 2];
    let mut dhl = vec![0.0; b * HIDDEN];
    let mut dh = vec![0.0; steps * b * HIDDEN];
    for _ in 0..EPOCHS {
        for p in lstm.params() {
            p.zero_grad();
        }
        for p in head.params() {
            p.zero_grad();
        }
        lstm.forward(&x, steps, b, &mut tr);
        for i in 0..b {
            let r = ((last[i] + 1) * b + i) * HIDDEN;
            hl[i * HIDDEN..(i + 1) * HIDDEN].copy_from_slice(&tr.hs[r..r + HIDDEN]);
        }
        head.forward(&hl, &mut logits, b);
        for i in 0..b {
            let (a, c) = (logits[2 * i], logits[2 * i + 1]);
            let m = a.max(c);
            let (ea, ec) = ((a - m).exp(), (c - m).exp());
            let (pa, pc) = (ea / (ea + ec), ec / (ea + ec));
            let y = ytr[i];
            dl[2 * i] = (pa - if y == 0 { 1.0 } else { 0.0 }) / b as F;
            dl[2 * i + 1] = (pc - if y == 1 { 1.0 } else { 0.0 }) / b as F;
        }
        head.backward(&hl, &dl, Some(&mut dhl), b);
        dh.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..b {
            let r = (last[i] * b + i) * HIDDEN;
            dh[r..r + HIDDEN].copy_from_slice(&dhl[i * HIDDEN..(i + 1) * HIDDEN]);
        }
        lstm.backward(&x, &tr, &dh);
        let mut params: Vec<&mut Param> = lstm.params().into_iter().collect();
        params.extend(head.params());
        adam.step(&mut params);
    }
    let (x, steps, last) = tensor(xte, d, &sc);
    let b = xte.len();
    lstm.forward(&x, steps, b, &mut tr);
    let mut hl = vec![0.0; b * HIDDEN];
    for i in 0..b {
        let r = ((last[i] + 1) * b + i) * HIDDEN;
        hl[i * HIDDEN..(i + 1) * HIDDEN].copy_from_slice(&tr.hs[r..r + HIDDEN]);
    }
    let mut logits = vec![0.0; b * 2];
    head.forward(&hl, &mut logits, b);
    let ok = (0..b)
        .filter(|&i| usize::from(logits[2 * i + 1] > logits[2 * i]) == yte[i])
        .count();
    Ok(ok as f64 / b as f64)
}
