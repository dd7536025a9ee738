//! BasicGANModel: DeepEcho 0.8.1's `BasicGANModel` (`deepecho/models/basic_gan.py`).
//!
//! Generator: a GRU fed per-step N(0,1) noise ⊕ the context, then a Linear layer; outputs
//! per numeric column a value (`tanh`, data scaled to [−1, 1]) and a missing flag
//! (sigmoid), per categorical column a softmax, plus, when the training lengths vary, an
//! end flag (no activation; the sequence ends at the first step where it is > 0.5).
//! Discriminator: a GRU over (data ⊕ context), a Linear layer on the last step's state.
//! Wasserstein losses with weight clipping: per epoch one full-batch Adam step for the
//! discriminator on −mean(D(real) − D(fake)), its weights then clamped to ±0.01, and one
//! for the generator on −mean(D(fake)) (backpropagated through the discriminator).

use super::Model;
use super::nn::{Adam, F, Gru, GruTrace, Linear, Param, sigmoid, tanh};
use crate::data::{Dataset, Kind, Sequence};
use crate::rng::Rng;
use guest_sdk::{Result, bail};

#[derive(Clone, Debug)]
enum Enc {
    Num { min: f64, range: f64 },
    Cat { k: usize },
}

impl Enc {
    /// Numeric: `[value, missing flag]`; categorical: one slot per category.
    fn width(&self) -> usize {
        match self {
            Enc::Num { .. } => 2,
            Enc::Cat { k } => (*k).max(1),
        }
    }
    fn write(&self, v: f64, out: &mut [F]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        match self {
            Enc::Num { min, range } => {
                if v.is_nan() {
                    out[1] = 1.0;
                } else if *range > 0.0 {
                    out[0] = (2.0 * (v - min) / range - 1.0) as F;
                } else {
                    // The reference divides by a zero range (NaN); a constant column is 0 here.
                    out[0] = 0.0;
                }
            }
            Enc::Cat { k } => {
                if !v.is_nan() && (v as usize) < *k {
                    out[v as usize] = 1.0;
                }
            }
        }
    }
    fn read(&self, x: &[F]) -> f64 {
        match self {
            Enc::Num { min, range } => {
                if x[1] > 0.5 {
                    f64::NAN
                } else {
                    min + (f64::from(x[0]) + 1.0) / 2.0 * range
                }
            }
            Enc::Cat { .. } => {
                let mut best = 0;
                for i in 1..x.len() {
                    if x[i] > x[best] {
                        best = i;
                    }
                }
                best as f64
            }
        }
    }
}

fn fit_enc(kind: &Kind, values: impl Iterator<Item = f64>) -> Enc {
    match kind {
        Kind::Categorical(c) => Enc::Cat { k: c.len() },
        Kind::Numeric => {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for v in values.filter(|v| !v.is_nan()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if lo > hi {
                (lo, hi) = (0.0, 0.0);
            }
            Enc::Num {
                min: lo,
                range: hi - lo,
            }
        }
    }
}

struct Nets {
    data: Vec<Enc>,
    ctx: Vec<Enc>,
    /// Data width (sum of the columns' widths).
    dd: usize,
    /// Context width.
    cd: usize,
    /// The model's data width: `dd`, plus the end flag when the training lengths vary.
    w: usize,
    g_rnn: Gru,
    g_out: Linear,
    d_rnn: Gru,
    d_out: Linear,
}

pub struct Gan {
    epochs: usize,
    latent: usize,
    hidden: usize,
    gen_lr: f64,
    dis_lr: f64,
    nets: Option<Nets>,
    max_len: usize,
    fixed_length: bool,
    /// (discriminator loss, generator loss) per epoch.
    pub losses: Vec<(f64, f64)>,
}

impl Gan {
    pub fn new(epochs: usize, latent: usize, hidden: usize, gen_lr: f64, dis_lr: f64) -> Self {
        Gan {
            epochs,
            latent,
            hidden,
            gen_lr,
            dis_lr,
            nets: None,
            max_len: 0,
            fixed_length: true,
            losses: Vec::new(),
        }
    }
}

/// The reference's weight clipping of the discriminator.
const CLIP: F = 0.01;

impl Nets {
    fn write_ctx(&self, context: &[f64], out: &mut [F]) {
        let mut o = 0;
        for (e, &v) in self.ctx.iter().zip(context) {
            e.write(v, &mut out[o..o + e.width()]);
            o += e.width();
        }
    }

    /// Generator forward: returns (trace, activated outputs `[T·B × w]`, inputs). With the
    /// end flag, every step after the first one whose flag is > 0.5 is zeroed and the flag
    /// becomes 0/1 (the reference's `_truncate`; no gradient flows through those steps).
    fn generate(
        &self,
        ctx: &[Vec<F>],
        steps: usize,
        latent: usize,
        rng: &mut Rng,
    ) -> (GruTrace, Vec<F>, Vec<F>) {
        let b = ctx.len();
        let nin = latent + self.cd;
        let mut x = vec![0.0; steps * b * nin];
        for t in 0..steps {
            for (i, c) in ctx.iter().enumerate() {
                let row = &mut x[(t * b + i) * nin..(t * b + i + 1) * nin];
                for v in row[..latent].iter_mut() {
                    *v = rng.normal() as F;
                }
                row[latent..].copy_from_slice(c);
            }
        }
        let mut tr = GruTrace::default();
        self.g_rnn.forward(&x, steps, b, &mut tr);
        let w = self.w;
        let mut y = vec![0.0; steps * b * w];
        self.g_out
            .forward(tr.outputs(self.g_rnn.hidden), &mut y, steps * b);
        for r in 0..steps * b {
            let row = &mut y[r * w..(r + 1) * w];
            let mut o = 0;
            for e in &self.data {
                match e {
                    Enc::Num { .. } => {
                        row[o] = tanh(row[o]);
                        row[o + 1] = sigmoid(row[o + 1]);
                    }
                    Enc::Cat { k } => {
                        let z = &mut row[o..o + k];
                        let m = z.iter().copied().fold(F::NEG_INFINITY, F::max);
                        let mut s = 0.0;
                        for v in z.iter_mut() {
                            *v = (*v - m).exp();
                            s += *v;
                        }
                        z.iter_mut().for_each(|v| *v /= s);
                    }
                }
                o += e.width();
            }
        }
        if w > self.dd {
            for i in 0..b {
                let mut ended = false;
                for t in 0..steps {
                    let row = &mut y[(t * b + i) * w..(t * b + i + 1) * w];
                    if ended {
                        row.fill(0.0);
                        continue;
                    }
                    let flag = row[w - 1] > 0.5;
                    row[w - 1] = if flag { 1.0 } else { 0.0 };
                    ended = flag;
                }
            }
        }
        (tr, y, x)
    }

    /// Discriminator input `[T·B × (w+cd)]` from data `[T·B × w]` and contexts.
    fn dis_input(&self, data: &[F], ctx: &[Vec<F>], steps: usize) -> Vec<F> {
        let b = ctx.len();
        let (w, nin) = (self.w, self.w + self.cd);
        let mut x = vec![0.0; steps * b * nin];
        for r in 0..steps * b {
            x[r * nin..r * nin + w].copy_from_slice(&data[r * w..(r + 1) * w]);
            x[r * nin + w..(r + 1) * nin].copy_from_slice(&ctx[r % b]);
        }
        x
    }

    /// Discriminator scores (the GRU's last state → linear), with the trace.
    fn discriminate(&self, x: &[F], steps: usize, b: usize) -> (GruTrace, Vec<F>) {
        let h = self.d_rnn.hidden;
        let mut tr = GruTrace::default();
        self.d_rnn.forward(x, steps, b, &mut tr);
        let last = &tr.outputs(h)[(steps - 1) * b * h..steps * b * h];
        let mut score = vec![0.0; b];
        self.d_out.forward(last, &mut score, b);
        (tr, score)
    }

    /// Backward of `discriminate` from d(loss)/d(score); returns d(loss)/d(input) if asked.
    fn dis_backward(
        &mut self,
        x: &[F],
        tr: &mut GruTrace,
        dscore: &[F],
        steps: usize,
        want_dx: bool,
    ) -> Option<Vec<F>> {
        let b = dscore.len();
        let h = self.d_rnn.hidden;
        let mut dh = vec![0.0; steps * b * h];
        {
            let last = &tr.outputs(h)[(steps - 1) * b * h..steps * b * h];
            self.d_out
                .backward(last, dscore, Some(&mut dh[(steps - 1) * b * h..]), b);
        }
        if want_dx {
            let mut dx = vec![0.0; x.len()];
            self.d_rnn.backward(x, tr, &dh, Some(&mut dx));
            Some(dx)
        } else {
            self.d_rnn.backward(x, tr, &dh, None);
            None
        }
    }

    fn d_params(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = self.d_rnn.params().into_iter().collect();
        v.extend(self.d_out.params());
        v
    }

    fn g_params(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = self.g_rnn.params().into_iter().collect();
        v.extend(self.g_out.params());
        v
    }
}

impl Model for Gan {
    fn fit(&mut self, ds: &Dataset, rng: &mut Rng) -> Result<()> {
        if ds.seqs.is_empty() {
            bail!("no sequences to fit");
        }
        let d = ds.n_dims();
        let data: Vec<Enc> = ds
            .data_cols
            .iter()
            .enumerate()
            .map(|(j, c)| {
                fit_enc(
                    &c.kind,
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
            .map(|(j, c)| fit_enc(&c.kind, ds.seqs.iter().map(|s| s.context[j])))
            .collect();
        let dd: usize = data.iter().map(Enc::width).sum();
        let cd: usize = ctx.iter().map(Enc::width).sum();
        self.max_len = ds.seqs.iter().map(|s| s.len).max().unwrap_or(1).max(1);
        self.fixed_length = ds.seqs.iter().all(|s| s.len == self.max_len);
        let w = dd + usize::from(!self.fixed_length);
        let (lat, hid) = (self.latent, self.hidden);
        let mut nets = Nets {
            data,
            ctx,
            dd,
            cd,
            w,
            g_rnn: Gru::new(lat + cd, hid, rng),
            g_out: Linear::new(hid, w, rng),
            d_rnn: Gru::new(w + cd, hid, rng),
            d_out: Linear::new(hid, 1, rng),
        };
        let steps = self.max_len;
        let b = ds.seqs.len();
        // Real tensor, zero-padded after each sequence; the end flag on its last step.
        let mut real = vec![0.0; steps * b * w];
        for (i, s) in ds.seqs.iter().enumerate() {
            for t in 0..s.len {
                let row = &mut real[(t * b + i) * w..(t * b + i + 1) * w];
                let mut o = 0;
                for (j, e) in nets.data.iter().enumerate() {
                    e.write(s.data[t * d + j], &mut row[o..o + e.width()]);
                    o += e.width();
                }
                if w > dd && t + 1 == s.len {
                    row[w - 1] = 1.0;
                }
            }
        }
        let ctxs: Vec<Vec<F>> = ds
            .seqs
            .iter()
            .map(|s| {
                let mut c = vec![0.0; cd];
                nets.write_ctx(&s.context, &mut c);
                c
            })
            .collect();
        let real_x = nets.dis_input(&real, &ctxs, steps);
        let mut opt_d = Adam::new(self.dis_lr);
        let mut opt_g = Adam::new(self.gen_lr);
        let bf = b as F;
        self.losses.clear();
        for epoch in 0..self.epochs {
            // Discriminator step on −mean(D(real) − D(fake)), then clip its weights.
            let (_, fake, _) = nets.generate(&ctxs, steps, lat, rng);
            let fake_x = nets.dis_input(&fake, &ctxs, steps);
            for p in nets.d_params() {
                p.zero_grad();
            }
            let (mut tr, real_s) = nets.discriminate(&real_x, steps, b);
            nets.dis_backward(&real_x, &mut tr, &vec![-1.0 / bf; b], steps, false);
            let (mut tr, fake_s) = nets.discriminate(&fake_x, steps, b);
            nets.dis_backward(&fake_x, &mut tr, &vec![1.0 / bf; b], steps, false);
            let dloss = -(real_s.iter().sum::<F>() - fake_s.iter().sum::<F>()) / bf;
            opt_d.step(&mut nets.d_params());
            for p in nets.d_params() {
                p.w.iter_mut().for_each(|v| *v = v.clamp(-CLIP, CLIP));
            }
            // Generator step on −mean(D(fake)), through the discriminator.
            for p in nets.g_params() {
                p.zero_grad();
            }
            let (mut gtr, fake, gx) = nets.generate(&ctxs, steps, lat, rng);
            let fake_x = nets.dis_input(&fake, &ctxs, steps);
            let (mut tr, fake_s) = nets.discriminate(&fake_x, steps, b);
            let gloss = -fake_s.iter().sum::<F>() / bf;
            let dx = nets
                .dis_backward(&fake_x, &mut tr, &vec![-1.0 / bf; b], steps, true)
                .unwrap_or_default();
            // The discriminator's weight gradients from this pass are not used (zeroed
            // before its next step), as in the reference.
            // Through the output activations. Steps after a sequence's end flag were set to
            // constants by the truncation: no gradient there (nor through the flag).
            let cut: Vec<usize> = (0..b)
                .map(|i| {
                    if w == nets.dd {
                        return steps;
                    }
                    (0..steps)
                        .find(|&t| fake[(t * b + i) * w + w - 1] == 1.0)
                        .unwrap_or(steps)
                })
                .collect();
            let nin_d = w + cd;
            let mut dy = vec![0.0; steps * b * w];
            for r in 0..steps * b {
                if r / b > cut[r % b] {
                    continue;
                }
                let out = &fake[r * w..(r + 1) * w];
                let g = &dx[r * nin_d..r * nin_d + w];
                let d = &mut dy[r * w..(r + 1) * w];
                let mut o = 0;
                for e in &nets.data {
                    match e {
                        Enc::Num { .. } => {
                            d[o] = g[o] * (1.0 - out[o] * out[o]);
                            d[o + 1] = g[o + 1] * out[o + 1] * (1.0 - out[o + 1]);
                        }
                        Enc::Cat { k } => {
                            let dot: F = (0..*k).map(|i| out[o + i] * g[o + i]).sum();
                            for i in 0..*k {
                                d[o + i] = out[o + i] * (g[o + i] - dot);
                            }
                        }
                    }
                    o += e.width();
                }
            }
            let mut dh = vec![0.0; steps * b * hid];
            nets.g_out
                .backward(gtr.outputs(hid), &dy, Some(&mut dh), steps * b);
            nets.g_rnn.backward(&gx, &mut gtr, &dh, None);
            opt_g.step(&mut nets.g_params());
            let (dl64, gl64) = (f64::from(dloss), f64::from(gloss));
            if !dl64.is_finite() || !gl64.is_finite() {
                bail!("the adversarial losses became non-finite at epoch {epoch}");
            }
            self.losses.push((dl64, gl64));
            if epoch % 16 == 0 {
                guest_sdk::progress(epoch as u64 + 1, self.epochs as u64 + 1);
            }
        }
        self.nets = Some(nets);
        Ok(())
    }

    fn sample(
        &mut self,
        ds: &Dataset,
        contexts: &[Sequence],
        rng: &mut Rng,
    ) -> Result<Vec<Sequence>> {
        let Some(nets) = &self.nets else {
            bail!("sample before fit")
        };
        let d = ds.n_dims();
        let ctxs: Vec<Vec<F>> = contexts
            .iter()
            .map(|s| {
                let mut c = vec![0.0; nets.cd];
                nets.write_ctx(&s.context, &mut c);
                c
            })
            .collect();
        let steps = self.max_len;
        let b = contexts.len();
        let w = nets.w;
        let (_, y, _) = nets.generate(&ctxs, steps, self.latent, rng);
        Ok(contexts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // The reference cuts before the first step whose end flag is set (here at
                // least one step is kept: an empty sequence would break the metrics).
                let mut len = steps;
                if !self.fixed_length {
                    for t in 0..steps {
                        if y[(t * b + i) * w + w - 1] == 1.0 {
                            len = t.max(1);
                            break;
                        }
                    }
                }
                let mut data = Vec::with_capacity(len * d);
                for t in 0..len {
                    let row = &y[(t * b + i) * w..(t * b + i + 1) * w];
                    let mut o = 0;
                    for e in &nets.data {
                        data.push(e.read(&row[o..o + e.width()]));
                        o += e.width();
                    }
                }
                Sequence {
                    entity: c.entity.clone(),
                    context: c.context.clone(),
                    data,
                    len,
                }
            })
            .collect())
    }
}
