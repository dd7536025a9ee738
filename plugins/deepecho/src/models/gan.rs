//! BasicGANModel: a GRU generator fed per-step noise and the context, a GRU
//! discriminator over (data, context) whose mean-pooled state feeds a linear real/fake
//! logit; non-saturating adversarial training, one full-batch Adam step for each network
//! per epoch.
//!
//! Data are scaled to [−1, 1] (numeric, `tanh` output; missing → 0) or one-hot
//! (categorical, softmax output); an extra "alive" channel (sigmoid) is 1 while the
//! sequence runs, which is how the generator learns lengths.

use super::Model;
use super::nn::{Adam, F, Gru, GruTrace, Linear, Param, sigmoid, softplus, tanh};
use crate::data::{Dataset, Kind, Sequence};
use crate::rng::Rng;
use guest_sdk::{Result, bail};

#[derive(Clone, Debug)]
enum Enc {
    Num { min: f64, range: f64 },
    Cat { k: usize },
}

impl Enc {
    fn width(&self) -> usize {
        match self {
            Enc::Num { .. } => 1,
            Enc::Cat { k } => (*k).max(1),
        }
    }
    fn write(&self, v: f64, out: &mut [F]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        if v.is_nan() {
            return;
        }
        match self {
            Enc::Num { min, range } => {
                out[0] = if *range > 0.0 {
                    (2.0 * (v - min) / range - 1.0) as F
                } else {
                    0.0
                }
            }
            Enc::Cat { k } => {
                if (v as usize) < *k {
                    out[v as usize] = 1.0;
                }
            }
        }
    }
    fn read(&self, x: &[F]) -> f64 {
        match self {
            Enc::Num { min, range } => min + (f64::from(x[0]) + 1.0) / 2.0 * range,
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
    dd: usize,
    cd: usize,
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
    min_len: usize,
    max_len: usize,
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
            min_len: 0,
            max_len: 0,
            losses: Vec::new(),
        }
    }
}

impl Nets {
    fn write_ctx(&self, context: &[f64], out: &mut [F]) {
        let mut o = 0;
        for (e, &v) in self.ctx.iter().zip(context) {
            e.write(v, &mut out[o..o + e.width()]);
            o += e.width();
        }
    }

    /// Generator forward: returns (trace, activated outputs `[T·B × (dd+1)]`, inputs).
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
        let w = self.dd + 1;
        let mut y = vec![0.0; steps * b * w];
        self.g_out
            .forward(tr.outputs(self.g_rnn.hidden), &mut y, steps * b);
        for r in 0..steps * b {
            let row = &mut y[r * w..(r + 1) * w];
            let mut o = 0;
            for e in &self.data {
                match e {
                    Enc::Num { .. } => row[o] = tanh(row[o]),
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
            row[w - 1] = sigmoid(row[w - 1]);
        }
        (tr, y, x)
    }

    /// Discriminator input `[T·B × (dd+1+cd)]` from data `[T·B × (dd+1)]` and contexts.
    fn dis_input(&self, data: &[F], ctx: &[Vec<F>], steps: usize) -> Vec<F> {
        let b = ctx.len();
        let (w, nin) = (self.dd + 1, self.dd + 1 + self.cd);
        let mut x = vec![0.0; steps * b * nin];
        for r in 0..steps * b {
            x[r * nin..r * nin + w].copy_from_slice(&data[r * w..(r + 1) * w]);
            x[r * nin + w..(r + 1) * nin].copy_from_slice(&ctx[r % b]);
        }
        x
    }

    /// Discriminator logits (mean-pooled GRU state → linear), with what backward needs.
    fn discriminate(&self, x: &[F], steps: usize, b: usize) -> (GruTrace, Vec<F>, Vec<F>) {
        let h = self.d_rnn.hidden;
        let mut tr = GruTrace::default();
        self.d_rnn.forward(x, steps, b, &mut tr);
        let mut pooled = vec![0.0; b * h];
        for (r, hv) in tr.outputs(h).chunks(h).enumerate() {
            for (p, v) in pooled[(r % b) * h..(r % b + 1) * h].iter_mut().zip(hv) {
                *p += v / steps as F;
            }
        }
        let mut logit = vec![0.0; b];
        self.d_out.forward(&pooled, &mut logit, b);
        (tr, pooled, logit)
    }

    /// Backward of `discriminate` from d(loss)/d(logit); returns d(loss)/d(input) if asked.
    fn dis_backward(
        &mut self,
        x: &[F],
        tr: &GruTrace,
        pooled: &[F],
        dlogit: &[F],
        steps: usize,
        want_dx: bool,
    ) -> Option<Vec<F>> {
        let b = dlogit.len();
        let h = self.d_rnn.hidden;
        let mut dpool = vec![0.0; b * h];
        self.d_out.backward(pooled, dlogit, Some(&mut dpool), b);
        let mut dh = vec![0.0; steps * b * h];
        for (r, d) in dh.chunks_mut(h).enumerate() {
            for (a, p) in d.iter_mut().zip(&dpool[(r % b) * h..(r % b + 1) * h]) {
                *a = p / steps as F;
            }
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
        let (lat, hid) = (self.latent, self.hidden);
        let mut nets = Nets {
            data,
            ctx,
            dd,
            cd,
            g_rnn: Gru::new(lat + cd, hid, rng),
            g_out: Linear::new(hid, dd + 1, rng),
            d_rnn: Gru::new(dd + 1 + cd, hid, rng),
            d_out: Linear::new(hid, 1, rng),
        };
        self.min_len = ds.seqs.iter().map(|s| s.len).min().unwrap_or(0).max(1);
        self.max_len = ds.seqs.iter().map(|s| s.len).max().unwrap_or(1).max(1);
        let steps = self.max_len;
        let b = ds.seqs.len();
        let w = dd + 1;
        // Real tensor.
        let mut real = vec![0.0; steps * b * w];
        for (i, s) in ds.seqs.iter().enumerate() {
            for t in 0..s.len {
                let row = &mut real[(t * b + i) * w..(t * b + i + 1) * w];
                let mut o = 0;
                for (j, e) in nets.data.iter().enumerate() {
                    e.write(s.data[t * d + j], &mut row[o..o + e.width()]);
                    o += e.width();
                }
                row[w - 1] = 1.0;
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
            // Discriminator step: real → 1, fake → 0.
            let (_, fake, _) = nets.generate(&ctxs, steps, lat, rng);
            let fake_x = nets.dis_input(&fake, &ctxs, steps);
            for p in nets.d_params() {
                p.zero_grad();
            }
            let (tr, pooled, logit) = nets.discriminate(&real_x, steps, b);
            let mut dloss = 0.0;
            let dl: Vec<F> = logit.iter().map(|&l| (sigmoid(l) - 1.0) / bf).collect();
            dloss += logit.iter().map(|&l| softplus(-l)).sum::<F>() / bf;
            nets.dis_backward(&real_x, &tr, &pooled, &dl, steps, false);
            let (tr, pooled, logit) = nets.discriminate(&fake_x, steps, b);
            let dl: Vec<F> = logit.iter().map(|&l| sigmoid(l) / bf).collect();
            dloss += logit.iter().map(|&l| softplus(l)).sum::<F>() / bf;
            nets.dis_backward(&fake_x, &tr, &pooled, &dl, steps, false);
            opt_d.step(&mut nets.d_params());
            // Generator step: make the discriminator say 1 on fakes.
            for p in nets.g_params() {
                p.zero_grad();
            }
            let (gtr, fake, gx) = nets.generate(&ctxs, steps, lat, rng);
            let fake_x = nets.dis_input(&fake, &ctxs, steps);
            let (tr, pooled, logit) = nets.discriminate(&fake_x, steps, b);
            let gloss = logit.iter().map(|&l| softplus(-l)).sum::<F>() / bf;
            let dl: Vec<F> = logit.iter().map(|&l| (sigmoid(l) - 1.0) / bf).collect();
            let dx = nets
                .dis_backward(&fake_x, &tr, &pooled, &dl, steps, true)
                .unwrap_or_default();
            // Through the output activations.
            let nin_d = w + cd;
            let mut dy = vec![0.0; steps * b * w];
            for r in 0..steps * b {
                let out = &fake[r * w..(r + 1) * w];
                let g = &dx[r * nin_d..r * nin_d + w];
                let d = &mut dy[r * w..(r + 1) * w];
                let mut o = 0;
                for e in &nets.data {
                    match e {
                        Enc::Num { .. } => d[o] = g[o] * (1.0 - out[o] * out[o]),
                        Enc::Cat { k } => {
                            let dot: F = (0..*k).map(|i| out[o + i] * g[o + i]).sum();
                            for i in 0..*k {
                                d[o + i] = out[o + i] * (g[o + i] - dot);
                            }
                        }
                    }
                    o += e.width();
                }
                d[w - 1] = g[w - 1] * out[w - 1] * (1.0 - out[w - 1]);
            }
            let mut dh = vec![0.0; steps * b * hid];
            nets.g_out
                .backward(gtr.outputs(hid), &dy, Some(&mut dh), steps * b);
            nets.g_rnn.backward(&gx, &gtr, &dh, None);
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
        let w = nets.dd + 1;
        let (_, y, _) = nets.generate(&ctxs, steps, self.latent, rng);
        Ok(contexts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut len = steps;
                for t in self.min_len..steps {
                    if y[(t * b + i) * w + w - 1] < 0.5 {
                        len = t;
                        break;
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
