//! PARModel: a probabilistic autoregressive model (DeepEcho 0.8.1's `PARModel`).
//!
//! Each step's input is the previous step's values (numeric columns standardised,
//! categorical one-hot) with a START / BODY token flag, plus the context (same encoding);
//! `Linear → GRU(32) → Linear` outputs, per data column, the parameters of its
//! distribution (numeric: Gaussian mean, softplus σ, missing-value logit; categorical:
//! softmax logits, one extra slot for "missing") and softmax logits of the token
//! [START, END, BODY] (sequence length is learned). Training: full-batch Adam (lr 1e-3)
//! on the reference's loss (NLL summed over steps and columns / (B² · (columns + 1))),
//! one step per epoch. Sampling: step by step for all contexts at once, carrying the GRU
//! state. `plugins/deepecho/README.md` lists what still differs from the reference.

use super::Model;
use super::nn::{
    Adam, F, Gru, GruTrace, Linear, Param, add_bias, col_sum, exp, ln, matmul, matmul_at,
    matmul_bt, max, sigmoid, softplus, softplus_sigmoid,
};
use crate::data::{Column, Dataset, Kind, Sequence};
use crate::rng::Rng;
use guest_sdk::{Result, bail};

mod parts;
pub use parts::serve;

const HIDDEN: usize = 32;
/// A floor under σ = softplus(·), only so that log σ stays finite in `f32` (the
/// reference has none; in standardised units it is never approached in practice).
const SIGMA_MIN: F = 1e-6;
const HALF_LN_2PI: F = 0.918_938_5;

#[derive(Clone, Debug)]
enum Enc {
    /// Standardised to `(x − mean) / sd` (population sd, as `np.nanstd`; 0 when sd = 0);
    /// `nulls`: the column had missing values in training (only then does sampling draw
    /// any).
    Num { mean: f64, sd: f64, nulls: bool },
    /// `k` = categories + 1 (the last slot means missing); `nulls` as for `Num`.
    Cat { k: usize, nulls: bool },
}

impl Enc {
    fn fit(col: &Column, values: impl Iterator<Item = f64>) -> Enc {
        match &col.kind {
            Kind::Categorical(c) => {
                let k = c.len() + 1;
                let nulls = values.into_iter().any(|v| cat_slot(k, v) == k - 1);
                Enc::Cat { k, nulls }
            }
            Kind::Numeric => {
                let (mut n, mut sum, mut nulls) = (0usize, 0.0f64, false);
                let vals: Vec<f64> = values.collect();
                for &v in &vals {
                    if v.is_nan() {
                        nulls = true;
                    } else {
                        n += 1;
                        sum += v;
                    }
                }
                let mean = if n > 0 { sum / n as f64 } else { 0.0 };
                let var = vals
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|v| (v - mean) * (v - mean))
                    .sum::<f64>()
                    / n.max(1) as f64;
                Enc::Num {
                    mean,
                    sd: var.sqrt(),
                    nulls,
                }
            }
        }
    }
    /// Input slots: numeric `[value, missing flag]`, categorical one-hot.
    fn n_in(&self) -> usize {
        match self {
            Enc::Num { .. } => 2,
            Enc::Cat { k, .. } => *k,
        }
    }
    /// The reference's input width for this column (only for the initialisation's fan-in):
    /// numeric `[value, σ (always 0), missing]`, categorical an unused slot + one per value.
    fn ref_in(&self) -> usize {
        match self {
            Enc::Num { .. } => 3,
            Enc::Cat { k, .. } => *k,
        }
    }
    fn n_out(&self) -> usize {
        match self {
            Enc::Num { .. } => 3,
            Enc::Cat { k, .. } => *k,
        }
    }
    /// Normalised target: the standardised number, or the category slot; NaN = missing number.
    fn target(&self, v: f64) -> F {
        match self {
            Enc::Num { mean, sd, .. } => {
                if v.is_nan() {
                    F::NAN
                } else if *sd > 0.0 {
                    ((v - mean) / sd) as F
                } else {
                    0.0
                }
            }
            Enc::Cat { k, .. } => cat_slot(*k, v) as F,
        }
    }
    fn write_input(&self, target: F, out: &mut [F]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        match self {
            Enc::Num { .. } => {
                if target.is_nan() {
                    out[1] = 1.0;
                } else {
                    out[0] = target;
                }
            }
            Enc::Cat { .. } => out[target as usize] = 1.0,
        }
    }
    /// Back to data units (NaN = missing).
    fn decode(&self, target: F) -> f64 {
        match self {
            Enc::Num { mean, sd, .. } => {
                if target.is_nan() {
                    f64::NAN
                } else {
                    mean + f64::from(target) * sd
                }
            }
            Enc::Cat { k, .. } => {
                if target as usize >= k - 1 {
                    f64::NAN
                } else {
                    f64::from(target)
                }
            }
        }
    }
}

/// A categorical value's slot among `k`: its code, or the last slot (missing) for NaN and
/// unknown codes.
fn cat_slot(k: usize, v: f64) -> usize {
    if v.is_nan() || v < 0.0 || v as usize >= k - 1 {
        k - 1
    } else {
        v as usize
    }
}

/// The sequence token, a categorical of its own as in the reference (`<TOKEN>`):
/// inputs carry START (step 0) or BODY (a data step) as flags, outputs are softmax
/// logits over [START, END, BODY].
const TOK_START: usize = 0;
const TOK_END: usize = 1;
const TOK_BODY: usize = 2;

/// The column encodings and tensor widths.
#[derive(Clone, Debug)]
pub struct Layout {
    data: Vec<Enc>,
    ctx: Vec<Enc>,
    pub n_in: usize,
    pub n_out: usize,
    data_in: usize,
    /// The reference's input width (`data_dims + ctx_dims`): the down layer's fan-in.
    ref_in: usize,
}

impl Layout {
    fn new(ds: &Dataset) -> Layout {
        let d = ds.n_dims();
        let data: Vec<Enc> = ds
            .data_cols
            .iter()
            .enumerate()
            .map(|(j, c)| {
                Enc::fit(
                    c,
                    ds.seqs
                        .iter()
                        .flat_map(|s| s.data.iter().skip(j).step_by(d).copied()),
                )
            })
            .collect();
        let ctx: Vec<Enc> = ds
            .context_cols
            .iter()
            .enumerate()
            .map(|(j, c)| Enc::fit(c, ds.seqs.iter().map(|s| s.context[j])))
            .collect();
        let data_in: usize = data.iter().map(Enc::n_in).sum();
        // [data inputs][START, BODY flags][context inputs]
        let n_in = data_in + 2 + ctx.iter().map(Enc::n_in).sum::<usize>();
        // [data outputs][START, END, BODY logits]
        let n_out = data.iter().map(Enc::n_out).sum::<usize>() + 3;
        let ref_in = data.iter().chain(&ctx).map(Enc::ref_in).sum::<usize>() + 3;
        Layout {
            data,
            ctx,
            n_in,
            n_out,
            data_in,
            ref_in,
        }
    }

    fn write_context(&self, context: &[f64], row: &mut [F]) {
        let mut o = self.data_in + 2;
        for (e, &v) in self.ctx.iter().zip(context) {
            let n = e.n_in();
            e.write_input(e.target(v), &mut row[o..o + n]);
            o += n;
        }
    }

    /// A data step's inputs and its token flag (`TOK_START` or `TOK_BODY`).
    fn write_step(&self, targets: &[F], token: usize, row: &mut [F]) {
        let mut o = 0;
        for (e, &t) in self.data.iter().zip(targets) {
            let n = e.n_in();
            e.write_input(t, &mut row[o..o + n]);
            o += n;
        }
        row[self.data_in] = if token == TOK_START { 1.0 } else { 0.0 };
        row[self.data_in + 1] = if token == TOK_BODY { 1.0 } else { 0.0 };
    }
}

/// A training batch, step-major (`row = t · B + b`). A row's input is `[data inputs |
/// START, BODY flags | context inputs]`; only the data inputs change from row to row, so
/// they are stored as a matrix and the rest as each row's flag and each sequence's
/// context, whose share of the input projection is computed once per sequence.
pub struct Batch {
    pub steps: usize,
    pub batch: usize,
    /// The whole training batch's size, for the loss's normalisation (`batch`, unless
    /// this is a part of it).
    whole: usize,
    /// `[rows × data_in]`: the previous step's values (0 at step 0 and in padding).
    xd: Vec<F>,
    /// Per row: `TOK_START` (step 0), `TOK_BODY` (a data step) or `NO_TOKEN` (padding).
    flag: Vec<u8>,
    /// `[B × ctx_in]`: each sequence's context inputs.
    ctx: Vec<F>,
    /// `[rows × n_cols]` normalised targets.
    targets: Vec<F>,
    /// 0 = predict values (and "not the end"), 1 = predict the end (and the END row's
    /// values), 2 = padding.
    kind: Vec<u8>,
}

/// A padding row's flag: neither START nor BODY.
const NO_TOKEN: u8 = u8::MAX;

/// The input slot of a row's flag (`data_in` + 0 for START, + 1 for BODY; none for padding).
fn flag_input(flag: u8, data_in: usize) -> Option<usize> {
    match flag as usize {
        TOK_START => Some(data_in),
        TOK_BODY => Some(data_in + 1),
        _ => None,
    }
}

impl Batch {
    pub fn new(layout: &Layout, seqs: &[Sequence]) -> Batch {
        Batch::part(layout, seqs, seqs.len())
    }

    /// The part of a batch of `whole` sequences made of `seqs`: its loss and gradients
    /// are that part's share of the whole batch's.
    pub fn part(layout: &Layout, seqs: &[Sequence], whole: usize) -> Batch {
        let batch = seqs.len();
        let steps = seqs.iter().map(|s| s.len).max().unwrap_or(0) + 1;
        let nc = layout.data.len();
        let (din, cin) = (layout.data_in, layout.n_in - layout.data_in - 2);
        let rows = steps * batch;
        let mut xd = vec![0.0; rows * din];
        let mut flag = vec![NO_TOKEN; rows];
        let mut ctx = vec![0.0; batch * cin];
        let mut targets = vec![0.0; rows * nc];
        let mut kind = vec![2u8; rows];
        let mut step_t = vec![0.0; nc];
        let mut row = vec![0.0; layout.n_in];
        for (b, s) in seqs.iter().enumerate() {
            layout.write_context(&s.context, &mut row);
            ctx[b * cin..(b + 1) * cin].copy_from_slice(&row[din + 2..]);
            for t in 0..steps {
                let r = t * batch + b;
                if t == 0 {
                    flag[r] = TOK_START as u8;
                } else if t - 1 < s.len {
                    for (j, e) in layout.data.iter().enumerate() {
                        step_t[j] = e.target(s.data[(t - 1) * nc + j]);
                    }
                    layout.write_step(&step_t, TOK_BODY, &mut row);
                    xd[r * din..(r + 1) * din].copy_from_slice(&row[..din]);
                    flag[r] = TOK_BODY as u8;
                }
                if t < s.len {
                    kind[r] = 0;
                    for (j, e) in layout.data.iter().enumerate() {
                        targets[r * nc + j] = e.target(s.data[t * nc + j]);
                    }
                } else if t == s.len {
                    // The reference also scores the data columns at the END row, against
                    // its all-zero input row; the targets keep their initial 0: numeric
                    // the standardised mean, not missing; categorical the first category.
                    kind[r] = 1;
                }
            }
        }
        Batch {
            steps,
            batch,
            whole,
            xd,
            flag,
            ctx,
            targets,
            kind,
        }
    }

    /// The full input rows `[rows × n_in]` (for tests: what the split stands for).
    #[cfg(test)]
    fn full_inputs(&self, layout: &Layout) -> Vec<F> {
        let (din, nin) = (layout.data_in, layout.n_in);
        let cin = nin - din - 2;
        let mut x = vec![0.0; self.steps * self.batch * nin];
        for (r, row) in x.chunks_exact_mut(nin).enumerate() {
            let b = r % self.batch;
            row[..din].copy_from_slice(&self.xd[r * din..(r + 1) * din]);
            if let Some(i) = flag_input(self.flag[r], din) {
                row[i] = 1.0;
            }
            row[din + 2..].copy_from_slice(&self.ctx[b * cin..(b + 1) * cin]);
        }
        x
    }
}

/// The network and its training state.
#[derive(Clone, Debug)]
pub struct Net {
    pub layout: Layout,
    pub down: Linear,
    pub gru: Gru,
    pub up: Linear,
}

/// Buffers reused across epochs.
#[derive(Default)]
pub struct Work {
    tr: GruTrace,
    y: Vec<F>,
    dy: Vec<F>,
    dh: Vec<F>,
    terms: Terms,
}

/// The loss's per-row terms, gathered so that they are computed by plain loops.
#[derive(Default)]
struct Terms {
    /// Per non-padding row: the token logits `[START, END, BODY]` and 1 if the target
    /// is END (else BODY).
    z: Vec<[F; 4]>,
    /// Per numeric column of a data row: missing-value logit, mean, σ's pre-activation,
    /// target (NaN if missing).
    num: Vec<[F; 4]>,
    tok_term: Vec<F>,
    tok_d: Vec<[F; 3]>,
    /// `[missing term, its gradient, Gaussian term, ∂mean, ∂σ-pre-activation]`.
    num_out: Vec<[F; 5]>,
}

impl Terms {
    fn clear(&mut self) {
        self.z.clear();
        self.num.clear();
    }

    fn compute(&mut self, scale: F) {
        self.tok_term.resize(self.z.len(), 0.0);
        self.tok_d.resize(self.z.len(), [0.0; 3]);
        token_terms(&self.z, &mut self.tok_term, &mut self.tok_d, scale);
        self.num_out.resize(self.num.len(), [0.0; 5]);
        num_terms(&self.num, &mut self.num_out, scale);
    }
}

/// Softmax cross-entropy of the token, per row: the loss term and the scaled gradient.
#[inline(never)]
fn token_terms(z: &[[F; 4]], term: &mut [F], d: &mut [[F; 3]], scale: F) {
    for ((z, term), d) in z.iter().zip(term).zip(d) {
        let mx = max(max(max(F::NEG_INFINITY, z[0]), z[1]), z[2]);
        let e: [F; 3] = [exp(z[0] - mx), exp(z[1] - mx), exp(z[2] - mx)];
        let sum = e[0] + e[1] + e[2];
        let end = z[3] == 1.0;
        let zc = if end { z[TOK_END] } else { z[TOK_BODY] };
        *term = ln(sum) + mx - zc;
        for i in 0..3 {
            let hot = if (i == TOK_END && end) || (i == TOK_BODY && !end) {
                1.0
            } else {
                0.0
            };
            d[i] = (e[i] / sum - hot) * scale;
        }
    }
}

/// A numeric column's terms, per value: the missing-value logit's Bernoulli loss, and
/// (meaningful when the target is present) the Gaussian negative log-likelihood, with
/// their scaled gradients.
#[inline(never)]
fn num_terms(num: &[[F; 4]], out: &mut [[F; 5]], scale: F) {
    for (&[lm, mu, sr, t], out) in num.iter().zip(out) {
        let m: F = if t.is_nan() { 1.0 } else { 0.0 };
        let (sp, sg) = softplus_sigmoid(lm);
        let (sp2, sg2) = softplus_sigmoid(sr);
        let s = sp2 + SIGMA_MIN;
        let diff = t - mu;
        let inv = 1.0 / s;
        *out = [
            sp - m * lm,
            (sg - m) * scale,
            HALF_LN_2PI + ln(s) + 0.5 * diff * diff * inv * inv,
            -diff * inv * inv * scale,
            (inv - diff * diff * inv * inv * inv) * sg2 * scale,
        ];
    }
}

impl Net {
    pub fn new(ds: &Dataset, rng: &mut Rng) -> Net {
        Net::with_layout(Layout::new(ds), rng)
    }

    fn with_layout(layout: Layout, rng: &mut Rng) -> Net {
        // PyTorch's init, U(±1/√fan_in), with the reference's input width as the fan-in:
        // its always-zero input slots (σ, an unused categorical slot, END) take no part
        // in the network's function, so they are not stored here.
        let down = Linear {
            w: Param::new(layout.n_in * HIDDEN, layout.ref_in, rng),
            b: Param::new(HIDDEN, layout.ref_in, rng),
            input: layout.n_in,
            output: HIDDEN,
        };
        let gru = Gru::new(HIDDEN, HIDDEN, rng);
        let up = Linear::new(HIDDEN, layout.n_out, rng);
        Net {
            layout,
            down,
            gru,
            up,
        }
    }

    pub fn params(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        v.extend(self.down.params());
        v.extend(self.gru.params());
        v.extend(self.up.params());
        v
    }

    /// The reference's loss: the negative log-likelihood summed over valid steps and
    /// columns, divided by `B² · (columns + 1)` (DeepEcho's normalisation; the + 1 is the
    /// token); with `grad`, also accumulates the parameter gradients (zero them first).
    pub fn loss(&mut self, b: &Batch, w: &mut Work, grad: bool) -> F {
        let rows = b.steps * b.batch;
        let (nin, nout) = (self.layout.n_in, self.layout.n_out);
        let (din, cin) = (self.layout.data_in, nin - self.layout.data_in - 2);
        let h3 = 3 * HIDDEN;
        // Linear → GRU input projection folded into one product: GI = X·(W_d·W_i) +
        // (b_d·W_i + b_i), X = [data | flags | context]. The data part is a product per
        // row; the flags' and the context's parts are rows of W_c added per row.
        let mut wc = vec![0.0; nin * h3];
        matmul(
            &self.down.w.w,
            &self.gru.wi.w,
            &mut wc,
            nin,
            HIDDEN,
            h3,
            false,
        );
        let mut bc = self.gru.bi.w.clone();
        matmul(&self.down.b.w, &self.gru.wi.w, &mut bc, 1, HIDDEN, h3, true);
        // base[b] = bc + context_b · W_c[context rows]
        let mut base = vec![0.0; b.batch * h3];
        matmul(
            &b.ctx,
            &wc[(din + 2) * h3..],
            &mut base,
            b.batch,
            cin,
            h3,
            false,
        );
        add_bias(&mut base, &bc, b.batch, h3);
        let mut gi = std::mem::take(&mut w.tr.gi);
        gi.resize(rows * h3, 0.0);
        matmul(&b.xd, &wc, &mut gi, rows, din, h3, false);
        for (r, g) in gi.chunks_exact_mut(h3).enumerate() {
            let bs = &base[(r % b.batch) * h3..][..h3];
            match flag_input(b.flag[r], din) {
                Some(i) => add3(g, bs, &wc[i * h3..][..h3]),
                None => add_bias(g, bs, 1, h3),
            }
        }
        self.gru.forward_projected(gi, b.steps, b.batch, &mut w.tr);
        w.y.resize(rows * nout, 0.0);
        self.up.forward(w.tr.outputs(HIDDEN), &mut w.y, rows);
        w.dy.clear();
        w.dy.resize(rows * nout, 0.0);
        let nc = self.layout.data.len();
        let scale = 1.0 / (b.whole * b.whole * (nc + 1)).max(1) as F;
        // The terms are computed column-wise first (plain loops over gathered values,
        // which LLVM vectorises: exp and ln are branch-free), then summed row by row in
        // the order of the row loop they replace, so the loss is the same bits.
        let t = &mut w.terms;
        t.clear();
        for r in 0..rows {
            if b.kind[r] == 2 {
                continue;
            }
            let y = &w.y[r * nout..(r + 1) * nout];
            let z = &y[nout - 3..];
            t.z.push([z[0], z[1], z[2], (b.kind[r] == 1) as u8 as F]);
            let mut o = 0;
            for (j, e) in self.layout.data.iter().enumerate() {
                match e {
                    Enc::Num { .. } => {
                        t.num
                            .push([y[o + 2], y[o], y[o + 1], b.targets[r * nc + j]]);
                        o += 3;
                    }
                    Enc::Cat { k, .. } => o += k,
                }
            }
        }
        t.compute(scale);
        let mut total: F = 0.0;
        let (mut ti, mut ni) = (0, 0);
        for r in 0..rows {
            if b.kind[r] == 2 {
                continue;
            }
            let y = &w.y[r * nout..(r + 1) * nout];
            let dy = &mut w.dy[r * nout..(r + 1) * nout];
            total += t.tok_term[ti];
            dy[nout - 3..].copy_from_slice(&t.tok_d[ti]);
            ti += 1;
            let mut o = 0;
            for (j, e) in self.layout.data.iter().enumerate() {
                match e {
                    Enc::Num { .. } => {
                        let [tm, dlm, tg, dmu, dsr] = t.num_out[ni];
                        total += tm;
                        dy[o + 2] = dlm;
                        if !t.num[ni][3].is_nan() {
                            total += tg;
                            dy[o] = dmu;
                            dy[o + 1] = dsr;
                        }
                        ni += 1;
                        o += 3;
                    }
                    Enc::Cat { k, .. } => {
                        let tc = b.targets[r * nc + j];
                        let z = &y[o..o + k];
                        let mx = z.iter().copied().fold(F::NEG_INFINITY, max);
                        let sum: F = z.iter().map(|&v| exp(v - mx)).sum();
                        let c = tc as usize;
                        total += ln(sum) + mx - z[c];
                        for i in 0..*k {
                            let p = exp(z[i] - mx) / sum;
                            dy[o + i] = (p - if i == c { 1.0 } else { 0.0 }) * scale;
                        }
                        o += k;
                    }
                }
            }
        }
        if grad {
            w.dh.resize(rows * HIDDEN, 0.0);
            self.up
                .backward(w.tr.outputs(HIDDEN), &w.dy, Some(&mut w.dh), rows);
            self.gru.backward_projected(&mut w.tr, &w.dh);
            let dgi = &w.tr.dgi;
            // P = Xᵀ·dGI [n_in × 3H], by parts: the data rows' product, the flags' rows
            // (sums of dGI over the rows with that flag), the context's rows (contextᵀ ·
            // per-sequence sums); s = Σ dGI. Then dW_i += W_dᵀ·P + b_dᵀ·s, db_i += s,
            // dW_d += P·W_iᵀ, db_d += s·W_iᵀ.
            let mut p = vec![0.0; nin * h3];
            matmul_at(&b.xd, dgi, &mut p, rows, din, h3);
            let mut per_seq = vec![0.0; b.batch * h3];
            for (r, g) in dgi.chunks_exact(h3).enumerate() {
                if let Some(i) = flag_input(b.flag[r], din) {
                    add_bias(&mut p[i * h3..(i + 1) * h3], g, 1, h3);
                }
                add_bias(&mut per_seq[(r % b.batch) * h3..][..h3], g, 1, h3);
            }
            matmul_at(&b.ctx, &per_seq, &mut p[(din + 2) * h3..], b.batch, cin, h3);
            let mut s = vec![0.0; h3];
            col_sum(&per_seq, &mut s, b.batch, h3);
            col_sum(&s, &mut self.gru.bi.g, 1, h3);
            matmul_at(&self.down.w.w, &p, &mut self.gru.wi.g, nin, HIDDEN, h3);
            matmul_at(&self.down.b.w, &s, &mut self.gru.wi.g, 1, HIDDEN, h3);
            matmul_bt(
                &p,
                &self.gru.wi.w,
                &mut self.down.w.g,
                nin,
                h3,
                HIDDEN,
                true,
            );
            matmul_bt(&s, &self.gru.wi.w, &mut self.down.b.g, 1, h3, HIDDEN, true);
        }
        total * scale
    }

    /// Sample one sequence per context; returns (sequences, log-likelihoods).
    pub fn sample(
        &self,
        contexts: &[Sequence],
        min_len: usize,
        max_len: usize,
        rng: &mut Rng,
    ) -> (Vec<Sequence>, Vec<f64>) {
        let bsz = contexts.len();
        let (nin, nout) = (self.layout.n_in, self.layout.n_out);
        let nc = self.layout.data.len();
        let mut x = vec![0.0; bsz * nin];
        for (b, c) in contexts.iter().enumerate() {
            let row = &mut x[b * nin..(b + 1) * nin];
            self.layout.write_context(&c.context, row);
            row[self.layout.data_in] = 1.0; // START
        }
        let mut a = vec![0.0; bsz * HIDDEN];
        let mut h = vec![0.0; bsz * HIDDEN];
        let mut y = vec![0.0; bsz * nout];
        let mut scratch = Vec::new();
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); bsz];
        let mut lens = vec![0usize; bsz];
        let mut done = vec![false; bsz];
        let mut loglik = vec![0.0f64; bsz];
        let mut step_t = vec![0.0; nc];
        for t in 0..=max_len {
            self.down.forward(&x, &mut a, bsz);
            self.gru.step(&a, &mut h, bsz, &mut scratch);
            self.up.forward(&h, &mut y, bsz);
            for b in 0..bsz {
                if done[b] {
                    continue;
                }
                let yr = &y[b * nout..(b + 1) * nout];
                // The token, drawn from its softmax as the reference does; END ends the
                // sequence once it is at least `min_len` long (before that it counts as
                // BODY, as in the reference), and the end is forced at `max_len`.
                let z = &yr[nout - 3..];
                let mx = z.iter().copied().fold(F::NEG_INFINITY, max);
                let p: Vec<f64> = z.iter().map(|v| f64::from(exp(v - mx))).collect();
                let sum: f64 = p.iter().sum();
                let mut u = rng.f64() * sum;
                let mut tok = TOK_BODY;
                for (i, pi) in p.iter().enumerate() {
                    u -= pi;
                    if u <= 0.0 {
                        tok = i;
                        break;
                    }
                }
                loglik[b] += (p[tok] / sum).max(1e-12).ln();
                if t == max_len || (tok == TOK_END && t >= min_len) {
                    done[b] = true;
                    lens[b] = t;
                    continue;
                }
                if tok == TOK_END {
                    tok = TOK_BODY;
                }
                let mut o = 0;
                for (j, e) in self.layout.data.iter().enumerate() {
                    match e {
                        // A column that had no missing values in training never gets
                        // one drawn (the reference draws the flag anyway and writes the
                        // column's mean: README, Fidelity).
                        Enc::Num { nulls, .. } => {
                            let s = f64::from(softplus(yr[o + 1]) + SIGMA_MIN);
                            let zn = rng.normal();
                            let pm = if *nulls {
                                f64::from(sigmoid(yr[o + 2]))
                            } else {
                                0.0
                            };
                            if *nulls && rng.f64() < pm {
                                step_t[j] = F::NAN;
                                loglik[b] += pm.max(1e-12).ln();
                            } else {
                                step_t[j] = (f64::from(yr[o]) + s * zn) as F;
                                loglik[b] += (1.0 - pm).max(1e-12).ln()
                                    - f64::from(HALF_LN_2PI)
                                    - s.ln()
                                    - 0.5 * zn * zn;
                            }
                            o += 3;
                        }
                        Enc::Cat { k, nulls } => {
                            // Without missing values in training, the draw is over the
                            // categories alone (the last slot is missing).
                            let slots = if *nulls || *k == 1 { *k } else { k - 1 };
                            let zs = &yr[o..o + slots];
                            let mx = zs.iter().copied().fold(F::NEG_INFINITY, max);
                            let sum: f64 = zs.iter().map(|v| f64::from(exp(v - mx))).sum();
                            let mut u = rng.f64() * sum;
                            let mut c = slots - 1;
                            for (i, v) in zs.iter().enumerate() {
                                u -= f64::from(exp(v - mx));
                                if u <= 0.0 {
                                    c = i;
                                    break;
                                }
                            }
                            loglik[b] += f64::from(zs[c] - mx) - sum.ln();
                            step_t[j] = c as F;
                            o += k;
                        }
                    }
                }
                for (j, e) in self.layout.data.iter().enumerate() {
                    out[b].push(e.decode(step_t[j]));
                }
                let row = &mut x[b * nin..(b + 1) * nin];
                self.layout.write_step(&step_t, tok, row);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        let seqs = contexts
            .iter()
            .zip(out)
            .zip(lens)
            .map(|((c, data), len)| Sequence {
                entity: c.entity.clone(),
                context: c.context.clone(),
                data,
                len,
            })
            .collect();
        (seqs, loglik)
    }
}

/// `g += a + b`, elementwise.
#[inline]
fn add3(g: &mut [F], a: &[F], b: &[F]) {
    for ((g, &a), &b) in g.iter_mut().zip(a).zip(b) {
        *g += a + b;
    }
}

/// Helper for f64 conversions that also compile when `F = f64` (unit tests).
trait ToF64 {
    fn to64(self) -> f64;
}
impl ToF64 for F {
    #[allow(clippy::unnecessary_cast)] // F is f64 in unit tests
    fn to64(self) -> f64 {
        self as f64
    }
}

pub struct Par {
    epochs: usize,
    sample_size: usize,
    net: Option<Net>,
    min_len: usize,
    max_len: usize,
    /// The training loss after each epoch (before the update), for tests and logs.
    pub losses: Vec<f64>,
}

impl Par {
    pub fn new(epochs: usize, sample_size: usize) -> Self {
        Par {
            epochs,
            sample_size,
            net: None,
            min_len: 0,
            max_len: 0,
            losses: Vec::new(),
        }
    }
}

impl Model for Par {
    fn fit(&mut self, ds: &Dataset, rng: &mut Rng) -> Result<()> {
        if ds.seqs.is_empty() {
            bail!("no sequences to fit");
        }
        let mut net = Net::new(ds, rng);
        // Two parts by sequence (see `parts`): the second maybe in a helper, beside.
        let (whole, split) = (ds.seqs.len(), ds.seqs.len().div_ceil(2));
        let batch = Batch::part(&net.layout, &ds.seqs[..split], whole);
        let mut second =
            parts::Second::start(&net, Batch::part(&net.layout, &ds.seqs[split..], whole));
        self.min_len = ds.seqs.iter().map(|s| s.len).min().unwrap_or(0);
        self.max_len = ds.seqs.iter().map(|s| s.len).max().unwrap_or(0);
        let mut adam = Adam::new(1e-3);
        let mut work = Work::default();
        self.losses.clear();
        for epoch in 0..self.epochs {
            for p in net.params() {
                p.zero_grad();
            }
            let weights = parts::weights(&mut net);
            second.begin(&weights)?;
            let loss = net.loss(&batch, &mut work, true);
            let loss = loss + second.finish(&weights, &mut net)?;
            if !loss.is_finite() {
                bail!("the training loss became {loss} at epoch {epoch}");
            }
            self.losses.push(loss.to64());
            adam.step(&mut net.params());
            if epoch % 16 == 0 || epoch + 1 == self.epochs {
                guest_sdk::progress(epoch as u64 + 1, self.epochs as u64 + 1);
            }
        }
        if let (Some(first), Some(last)) = (self.losses.first(), self.losses.last()) {
            guest_sdk::info!(
                "PARModel on {}: loss {first:.3} → {last:.3} in {} epochs",
                ds.name,
                self.epochs
            );
        }
        self.net = Some(net);
        Ok(())
    }

    fn sample(
        &mut self,
        _ds: &Dataset,
        contexts: &[Sequence],
        rng: &mut Rng,
    ) -> Result<Vec<Sequence>> {
        let Some(net) = &self.net else {
            bail!("sample before fit")
        };
        let (mut best, mut best_ll) = net.sample(contexts, self.min_len, self.max_len, rng);
        for _ in 1..self.sample_size {
            let (cand, ll) = net.sample(contexts, self.min_len, self.max_len, rng);
            for (i, (c, l)) in cand.into_iter().zip(ll).enumerate() {
                if l > best_ll[i] {
                    best[i] = c;
                    best_ll[i] = l;
                }
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Column;

    fn toy(rng: &mut Rng) -> Dataset {
        let data_cols = vec![
            Column {
                name: "a".into(),
                kind: Kind::Numeric,
            },
            Column {
                name: "b".into(),
                kind: Kind::Categorical(vec!["x".into(), "y".into()]),
            },
        ];
        let context_cols = vec![Column {
            name: "c".into(),
            kind: Kind::Categorical(vec!["p".into(), "q".into()]),
        }];
        let seqs = (0..5)
            .map(|i| {
                let len = 2 + i % 3;
                let mut data = Vec::new();
                for t in 0..len {
                    data.push(if (i + t) % 4 == 0 {
                        f64::NAN
                    } else {
                        rng.normal()
                    });
                    data.push(if t % 3 == 2 {
                        f64::NAN
                    } else {
                        (rng.below(2)) as f64
                    });
                }
                Sequence {
                    entity: i.to_string(),
                    context: vec![(i % 2) as f64],
                    data,
                    len,
                }
            })
            .collect();
        Dataset {
            name: "toy".into(),
            entity_col: "e".into(),
            context_cols,
            data_cols,
            seqs,
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(7);
        let ds = toy(&mut rng);
        let mut net = Net::new(&ds, &mut rng);
        let batch = Batch::new(&net.layout, &ds.seqs);
        let mut work = Work::default();
        for p in net.params() {
            p.zero_grad();
        }
        net.loss(&batch, &mut work, true);
        let analytic: Vec<Vec<F>> = net.params().iter().map(|p| p.g.clone()).collect();
        let n_params = analytic.len();
        let eps = 1e-6;
        let mut worst: F = 0.0;
        for pi in 0..n_params {
            let len = analytic[pi].len();
            for k in (0..len).step_by((len / 23).max(1)) {
                let orig = net.params()[pi].w[k];
                net.params()[pi].w[k] = orig + eps;
                let lp = net.loss(&batch, &mut work, false);
                net.params()[pi].w[k] = orig - eps;
                let lm = net.loss(&batch, &mut work, false);
                net.params()[pi].w[k] = orig;
                let numeric = (lp - lm) / (2.0 * eps);
                let err = (numeric - analytic[pi][k]).abs()
                    / (numeric.abs() + analytic[pi][k].abs() + 1e-6);
                assert!(
                    err < 1e-4,
                    "param {pi}[{k}]: numeric {numeric} vs analytic {}",
                    analytic[pi][k]
                );
                worst = worst.max(err);
            }
        }
        assert!(worst < 1e-4);
    }

    #[test]
    fn training_lowers_the_loss_and_samples_respect_lengths() {
        let mut rng = Rng::new(3);
        let ds = toy(&mut rng);
        let mut par = Par::new(60, 2);
        par.fit(&ds, &mut rng).unwrap();
        let (first, last) = (par.losses[0], *par.losses.last().unwrap());
        assert!(last < first - 0.1, "loss {first} → {last}");
        let out = par.sample(&ds, &ds.seqs, &mut rng).unwrap();
        assert_eq!(out.len(), ds.seqs.len());
        for s in &out {
            assert!((2..=4).contains(&s.len), "length {}", s.len);
            assert_eq!(s.data.len(), s.len * 2);
        }
    }

    /// Missing values are sampled only in columns that had some in training. Untrained
    /// (one epoch) the missing logits are near 0, so before this rule about half the
    /// draws were "missing" (a numeric one decoded to the column's mean).
    #[test]
    fn missing_values_are_drawn_only_where_training_had_them() {
        let mut rng = Rng::new(5);
        let with = toy(&mut rng);
        let mut without = with.clone();
        for s in &mut without.seqs {
            for (i, v) in s.data.iter_mut().enumerate() {
                if v.is_nan() {
                    *v = if i % 2 == 0 { 0.5 } else { 1.0 };
                }
            }
        }
        let contexts: Vec<Sequence> = (0..40).flat_map(|_| with.seqs.clone()).collect();
        for (ds, nulls) in [(&with, true), (&without, false)] {
            let mut par = Par::new(1, 1);
            par.fit(ds, &mut rng).unwrap();
            let Some(Enc::Num { mean, .. }) = par.net.as_ref().map(|n| n.layout.data[0].clone())
            else {
                panic!("column a is numeric")
            };
            let out = par.sample(ds, &contexts, &mut rng).unwrap();
            let values = || out.iter().flat_map(|s| s.data.chunks_exact(2));
            let num_missing = values().filter(|v| v[0].is_nan() || v[0] == mean).count();
            let cat_missing = values().filter(|v| v[1].is_nan()).count();
            if nulls {
                assert!(
                    num_missing > 0 && cat_missing > 0,
                    "{num_missing} {cat_missing}"
                );
            } else {
                assert_eq!((num_missing, cat_missing), (0, 0));
            }
        }
    }

    /// The loss's split input projection (data rows by product, flags and context per
    /// row) computes what `Linear → GRU → Linear` computes on the full input rows.
    #[test]
    fn two_parts_give_the_whole_batch_and_a_helper_the_same_bits() {
        let mut rng = Rng::new(5);
        let ds = toy(&mut rng);
        let n = ds.seqs.len();
        let mut net = Net::new(&ds, &mut rng);
        let mut work = Work::default();
        for p in net.params() {
            p.zero_grad();
        }
        let whole_loss = net.loss(&Batch::new(&net.layout, &ds.seqs), &mut work, true);
        let whole_grads = parts::grads(&mut net);

        let split = n.div_ceil(2);
        let first = Batch::part(&net.layout, &ds.seqs[..split], n);
        let layout = net.layout.clone();
        let second = || Batch::part(&layout, &ds.seqs[split..], n);
        let weights = parts::weights(&mut net);
        // Natively no helper starts: the second part is computed here.
        let mut here = parts::Second::start(&net, second());
        assert!(matches!(here, parts::Second::Here(_)));
        for p in net.params() {
            p.zero_grad();
        }
        let first_loss = net.loss(&first, &mut work, true);
        let first_grads = parts::grads(&mut net);
        here.begin(&weights).unwrap();
        let loss = first_loss + here.finish(&weights, &mut net).unwrap();
        let sum_grads = parts::grads(&mut net);
        assert!(
            (loss - whole_loss).abs() < 1e-12 * whole_loss.abs(),
            "{loss} vs {whole_loss}"
        );
        for (a, b) in sum_grads.iter().zip(&whole_grads) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }

        // A helper's side, through the wire: the second part's loss and gradients,
        // bit for bit what the shard's own instance adds to the first part's.
        assert_eq!(
            serve(&parts::init_request(&layout, &second())).unwrap(),
            b""
        );
        let reply = serve(&parts::step_request(&weights)).unwrap();
        let (helper_loss, helper_grads) = parts::read_reply(&reply).unwrap();
        assert_eq!((first_loss + helper_loss).to_bits(), loss.to_bits());
        let added: Vec<F> = first_grads
            .iter()
            .zip(&helper_grads)
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(added, sum_grads);
        let e = serve(&reply[..3]).unwrap_err();
        assert!(
            e.message().contains("unknown request") || e.message().contains("truncated"),
            "{e}"
        );
        let e = serve(&parts::step_request(&weights[..5])).unwrap_err();
        assert!(e.message().contains("fewer than its network has"), "{e}");
    }

    #[test]
    fn split_inputs_give_the_full_network() {
        let mut rng = Rng::new(5);
        let ds = toy(&mut rng);
        let mut net = Net::new(&ds, &mut rng);
        let batch = Batch::new(&net.layout, &ds.seqs);
        let mut work = Work::default();
        net.loss(&batch, &mut work, false);
        let rows = batch.steps * batch.batch;
        let x = batch.full_inputs(&net.layout);
        let mut a = vec![0.0; rows * HIDDEN];
        net.down.forward(&x, &mut a, rows);
        let mut tr = GruTrace::default();
        net.gru.forward(&a, batch.steps, batch.batch, &mut tr);
        let mut y = vec![0.0; rows * net.layout.n_out];
        net.up.forward(tr.outputs(HIDDEN), &mut y, rows);
        for (i, (a, b)) in y.iter().zip(&work.y).enumerate() {
            assert!((a - b).abs() < 1e-12, "output {i}: {a} vs {b}");
        }
    }

    /// Sampling carries the hidden state: the step-by-step GRU gives the same hidden
    /// states as the full-sequence forward pass on the same inputs.
    #[test]
    fn step_matches_sequence_forward() {
        let mut rng = Rng::new(11);
        let gru = Gru::new(4, 5, &mut rng);
        let (steps, batch) = (6, 3);
        let x: Vec<F> = (0..steps * batch * 4).map(|_| rng.normal() as F).collect();
        let mut tr = GruTrace::default();
        gru.forward(&x, steps, batch, &mut tr);
        let mut h = vec![0.0; batch * 5];
        let mut scratch = Vec::new();
        for t in 0..steps {
            gru.step(
                &x[t * batch * 4..(t + 1) * batch * 4],
                &mut h,
                batch,
                &mut scratch,
            );
            let want = &tr.outputs(5)[t * batch * 5..(t + 1) * batch * 5];
            for (a, b) in h.iter().zip(want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }
}
