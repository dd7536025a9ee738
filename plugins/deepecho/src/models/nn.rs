//! Hand-written neural-network pieces: dense matrix products, a GRU and an LSTM with
//! forward and backward passes over whole padded batches, and Adam.
//!
//! Matrices are row-major `f32` slices; weights are stored `[in × out]` so a layer is
//! `Y = X · W + b` with one example per row. Sequences are step-major: row `t * B + b`.
//! Unit tests compile with `F = f64` so finite-difference gradient checks are exact.

use crate::rng::Rng;

#[cfg(not(test))]
pub type F = f32;
#[cfg(test)]
pub type F = f64;

/// `eˣ` for `f32`: 2^(x·log₂e) split into an integer power (built in the exponent bits)
/// and a degree-6 polynomial on [−½, ½]; relative error ≈ 2e-7, branch-free so loops
/// over it vectorise (libm's `expf` does not).
#[cfg(not(test))]
#[inline]
pub fn exp(x: F) -> F {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    let r = t + MAGIC;
    let i = (r.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let f = t - (r - MAGIC);
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11
                    + f * (0.009_618_129 + f * (0.001_333_355 + f * 0.000_154_035_3)))));
    f32::from_bits(((i + 127) << 23) as u32) * p
}

/// Unit tests run in `f64` with the exact exponential (for gradient checks).
#[cfg(test)]
#[inline]
pub fn exp(x: F) -> F {
    x.exp()
}

#[inline]
pub fn sigmoid(x: F) -> F {
    1.0 / (1.0 + exp(-x))
}

#[inline]
pub fn tanh(x: F) -> F {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// `ln x` for `f32`, `x` positive and normal: musl's `logf` (argument reduced to
/// [√½, √2), `2·atanh` series in `s = f/(2+f)`), without its branches for zero,
/// negative, subnormal and infinite `x`, so that it inlines; error < 1 ulp.
#[cfg(not(test))]
#[inline]
pub fn ln(x: F) -> F {
    ln_f32(x)
}

#[inline]
fn ln_f32(x: f32) -> f32 {
    // musl's constants, bit for bit: ln 2 split in two, and the series' coefficients.
    let ln2_hi = f32::from_bits(0x3f31_7180); // 0.693_138_1
    let ln2_lo = f32::from_bits(0x3717_f7d1); // 9.058e-6
    let lg1 = f32::from_bits(0x3f2a_aaaa); // 0.666_666_6
    let lg2 = f32::from_bits(0x3ecc_ce13); // 0.400_009_7
    let lg3 = f32::from_bits(0x3e91_e9ee); // 0.284_987_9
    let lg4 = f32::from_bits(0x3e78_9e26); // 0.242_790_8
    let ix = x.to_bits().wrapping_add(0x3f80_0000 - 0x3f35_04f3);
    let k = (ix >> 23) as i32 - 0x7f;
    let f = f32::from_bits((ix & 0x007f_ffff) + 0x3f35_04f3) - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let r = z * (lg1 + w * lg3) + w * (lg2 + w * lg4);
    let hfsq = 0.5 * f * f;
    let dk = k as f32;
    s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi
}

/// Unit tests run in `f64` with the exact logarithm.
#[cfg(test)]
#[inline]
pub fn ln(x: F) -> F {
    x.ln()
}

/// `ln(1 + x)` for `x ≥ 0`, accurate for small `x` too: `ln(u) · x / (u − 1)` with
/// `u = 1 + x` rounded (Goldberg's correction).
#[inline]
pub fn ln_1p(x: F) -> F {
    let u = 1.0 + x;
    if u == 1.0 { x } else { ln(u) * x / (u - 1.0) }
}

/// The larger of two numbers (no NaN handling): a compare and a select, where `f32::max`
/// is a call to `fmaxf` in WebAssembly.
#[inline]
pub fn max(a: F, b: F) -> F {
    if a > b { a } else { b }
}

#[inline]
pub fn softplus(x: F) -> F {
    max(x, 0.0) + ln_1p(exp(-x.abs()))
}

/// `(softplus(x), sigmoid(x))` from one exponential.
#[inline]
pub fn softplus_sigmoid(x: F) -> (F, F) {
    let e = exp(-x.abs());
    let sg = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    (max(x, 0.0) + ln_1p(e), sg)
}

/// A trainable tensor with its gradient and Adam moments.
#[derive(Clone, Debug)]
pub struct Param {
    pub w: Vec<F>,
    pub g: Vec<F>,
    m: Vec<F>,
    v: Vec<F>,
}

impl Param {
    /// Uniform in ±1/sqrt(fan_in), like PyTorch's Linear and GRU.
    pub fn new(n: usize, fan_in: usize, rng: &mut Rng) -> Self {
        let k = 1.0 / (fan_in.max(1) as f64).sqrt();
        let w = (0..n).map(|_| rng.uniform(-k, k) as F).collect();
        Param {
            w,
            g: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    pub fn zero_grad(&mut self) {
        self.g.iter_mut().for_each(|g| *g = 0.0);
    }
}

/// Adam (Kingma & Ba), PyTorch defaults except the learning rate.
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: F,
    t: i32,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Adam { lr: lr as F, t: 0 }
    }

    pub fn step(&mut self, params: &mut [&mut Param]) {
        self.t += 1;
        let (b1, b2, eps): (F, F, F) = (0.9, 0.999, 1e-8);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let lr = self.lr / c1;
        let c2s = c2.sqrt();
        for p in params.iter_mut() {
            for i in 0..p.w.len() {
                let g = p.g[i];
                p.m[i] = b1 * p.m[i] + (1.0 - b1) * g;
                p.v[i] = b2 * p.v[i] + (1.0 - b2) * g * g;
                p.w[i] -= lr * p.m[i] / (p.v[i].sqrt() / c2s + eps);
            }
        }
    }
}

/// Rows and columns of one register block of [`matmul`].
const RB: usize = 4;
const CB: usize = 8;
/// Steps of `k` per iteration of [`block`]'s inner loop (in WebAssembly).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128", not(test)))]
const KU: usize = 4;

/// A right-hand matrix `w[k×n]` repacked for [`Packed::mul`]: 8-column panels (`k × 8`,
/// contiguous, the last one zero-padded), so that the product's inner loop reads two
/// sequential streams, has no bounds checks, and also covers the columns left over when
/// `n` is not a multiple of 8. Packing once serves every product with the same `w` (the
/// GRU's recurrent weights serve every step of an epoch).
pub struct Packed {
    k: usize,
    n: usize,
    panels: Vec<F>,
}

impl Packed {
    pub fn new(w: &[F], k: usize, n: usize) -> Packed {
        let w = &w[..k * n];
        let mut panels = vec![0.0 as F; n.div_ceil(CB) * k * CB];
        if k > 0 {
            for (jb, panel) in panels.chunks_exact_mut(k * CB).enumerate() {
                let j = jb * CB;
                let cols = CB.min(n - j);
                for (p, wr) in panel.chunks_exact_mut(CB).zip(w.chunks_exact(n)) {
                    copy_cols(&mut p[..cols], &wr[j..j + cols]);
                }
            }
        }
        Packed { k, n, panels }
    }

    /// `w[n×k]ᵀ` packed (the `[k×n]` transpose of `w`), without forming the transpose.
    pub fn transposed(w: &[F], k: usize, n: usize) -> Packed {
        let w = &w[..k * n];
        let mut panels = vec![0.0 as F; n.div_ceil(CB) * k * CB];
        if k > 0 {
            for (jb, panel) in panels.chunks_exact_mut(k * CB).enumerate() {
                let j = jb * CB;
                for (kk, p) in panel.chunks_exact_mut(CB).enumerate() {
                    for (c, v) in p.iter_mut().enumerate().take(n - j) {
                        *v = w[(j + c) * k + kk];
                    }
                }
            }
        }
        Packed { k, n, panels }
    }

    /// `y[m×n] (+)= x[m×k] · w`: 4×8 register blocks (the accumulators stay in SIMD
    /// registers, each loaded weight vector serves four rows). Each block of 4 rows of `x`
    /// is interleaved into `k × 4` first (the last block zero-padded). Every output is the
    /// same sum in the same order as the plain triple loop (`y + x₀w₀ + x₁w₁ + …`): the
    /// results are bit-identical to it.
    pub fn mul(&self, x: &[F], y: &mut [F], m: usize, accumulate: bool) {
        let (k, n) = (self.k, self.n);
        let x = &x[..m * k];
        let y = &mut y[..m * n];
        if k == 0 {
            if !accumulate {
                y.fill(0.0);
            }
            return;
        }
        let mut xp = vec![[0.0 as F; RB]; k];
        for i0 in (0..m).step_by(RB) {
            let rows = RB.min(m - i0);
            if rows == RB {
                let xb = &x[i0 * k..(i0 + RB) * k];
                let (x0, rest) = xb.split_at(k);
                let (x1, rest) = rest.split_at(k);
                let (x2, x3) = rest.split_at(k);
                for (kk, p) in xp.iter_mut().enumerate() {
                    *p = [x0[kk], x1[kk], x2[kk], x3[kk]];
                }
            } else {
                xp.fill([0.0; RB]);
                for (r, xr) in x[i0 * k..].chunks_exact(k).enumerate() {
                    for (p, &v) in xp.iter_mut().zip(xr) {
                        p[r] = v;
                    }
                }
            }
            let yb = &mut y[i0 * n..(i0 + rows) * n];
            self.block_row(xp.as_flattened(), yb, rows, accumulate);
        }
    }

    /// One block row: `yb[rows×n] (+)= xp · w`, `xp` interleaved `k × 4`.
    fn block_row(&self, xp: &[F], yb: &mut [F], rows: usize, accumulate: bool) {
        let (k, n) = (self.k, self.n);
        for (jb, panel) in self.panels.chunks_exact(k * CB).enumerate() {
            let j = jb * CB;
            let cols = CB.min(n - j);
            let mut acc = [[0.0 as F; CB]; RB];
            if accumulate {
                for (a, yr) in acc.iter_mut().zip(yb.chunks_exact(n)) {
                    copy_cols(&mut a[..cols], &yr[j..j + cols]);
                }
            }
            block(xp, panel, &mut acc);
            for (a, yr) in acc.iter().zip(yb.chunks_exact_mut(n)).take(rows) {
                copy_cols(&mut yr[j..j + cols], &a[..cols]);
            }
        }
    }
}

/// `y[m×n] (+)= x[m×k] · w[k×n]` ([`Packed::mul`] after packing `w`).
pub fn matmul(x: &[F], w: &[F], y: &mut [F], m: usize, k: usize, n: usize, accumulate: bool) {
    Packed::new(w, k, n).mul(x, y, m, accumulate);
}

/// Copy up to `N` values; a full `N` with a fixed length, so that it compiles to vector
/// moves rather than a `memcpy` (in WebAssembly a `memory.copy`, which wasmtime runs as
/// a call into the host).
#[inline(always)]
fn copy_n<const N: usize>(dst: &mut [F], src: &[F]) {
    if let (Ok(d), Ok(s)) = (<&mut [F; N]>::try_from(&mut *dst), <&[F; N]>::try_from(src)) {
        *d = *s;
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
    }
}

#[inline(always)]
fn copy_cols(dst: &mut [F], src: &[F]) {
    copy_n::<CB>(dst, src);
}

/// [`block`] in WebAssembly SIMD: the same products and sums (a multiply, then an add,
/// per lane), written with intrinsics so that each row's scalar is broadcast from one
/// 4-lane load by a lane shuffle (`pshufd` under Cranelift). From the portable code LLVM
/// emits `v128.load32_splat`, which Cranelift turns into a scalar load into a general
/// register plus a broadcast: 16 live general registers per unrolled step, most spilled.
/// (Reading the four rows of `x` directly, without interleaving them first, lets LLVM
/// fold the loads and shuffles back into such splats: measured 9 % slower.) The loop
/// takes `k` in steps of 4: in WebAssembly wasmtime checks its epoch counter on every
/// loop back-edge and Cranelift keeps the accumulators on the stack across that check
/// (bench/KERNELS.md), so fewer, longer iterations matter.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128", not(test)))]
#[inline(always)]
fn block(xp: &[F], panel: &[F], acc: &mut [[F; CB]; RB]) {
    use core::arch::wasm32::{
        f32x4, f32x4_add, f32x4_extract_lane, f32x4_mul, i32x4_shuffle, v128,
    };
    #[inline(always)]
    fn load(a: &[F; 4]) -> v128 {
        f32x4(a[0], a[1], a[2], a[3])
    }
    let mut lo = [f32x4(0.0, 0.0, 0.0, 0.0); RB];
    let mut hi = lo;
    for r in 0..RB {
        let (h, _) = acc[r].as_chunks::<4>();
        (lo[r], hi[r]) = (load(&h[0]), load(&h[1]));
    }
    let mut step = |a: &[F; RB], v: &[F; CB]| {
        let av = load(a);
        let (v, _) = v.as_chunks::<4>();
        let (w0, w1) = (load(&v[0]), load(&v[1]));
        let s = [
            i32x4_shuffle::<0, 0, 0, 0>(av, av),
            i32x4_shuffle::<1, 1, 1, 1>(av, av),
            i32x4_shuffle::<2, 2, 2, 2>(av, av),
            i32x4_shuffle::<3, 3, 3, 3>(av, av),
        ];
        for r in 0..RB {
            lo[r] = f32x4_add(lo[r], f32x4_mul(s[r], w0));
            hi[r] = f32x4_add(hi[r], f32x4_mul(s[r], w1));
        }
    };
    let (xs, _) = xp.as_chunks::<RB>();
    let (ws, _) = panel.as_chunks::<CB>();
    for (a, v) in xs.chunks_exact(KU).zip(ws.chunks_exact(KU)) {
        for u in 0..KU {
            step(&a[u], &v[u]);
        }
    }
    let done = xs.len() - xs.len() % KU;
    for (a, v) in xs[done..].iter().zip(&ws[done..]) {
        step(a, v);
    }
    for r in 0..RB {
        let (l, h) = (lo[r], hi[r]);
        acc[r] = [
            f32x4_extract_lane::<0>(l),
            f32x4_extract_lane::<1>(l),
            f32x4_extract_lane::<2>(l),
            f32x4_extract_lane::<3>(l),
            f32x4_extract_lane::<0>(h),
            f32x4_extract_lane::<1>(h),
            f32x4_extract_lane::<2>(h),
            f32x4_extract_lane::<3>(h),
        ];
    }
}

/// `acc[r][c] += Σ_kk xp[kk·4 + r] · panel[kk·8 + c]` for one 4×8 block, `kk` in order.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128", not(test))))]
#[inline(always)]
fn block(xp: &[F], panel: &[F], acc: &mut [[F; CB]; RB]) {
    // `a` and `v` are arrays, so the loads need no bounds checks; natively each `a[r]`
    // becomes a broadcast from memory.
    let (xs, _) = xp.as_chunks::<RB>();
    let (ws, _) = panel.as_chunks::<CB>();
    for (a, v) in xs.iter().zip(ws) {
        for r in 0..RB {
            for c in 0..CB {
                acc[r][c] += a[r] * v[c];
            }
        }
    }
}

/// Add the bias row `b[n]` to every row of `y[m×n]`.
pub fn add_bias(y: &mut [F], b: &[F], m: usize, n: usize) {
    for i in 0..m {
        for (yv, &bv) in y[i * n..(i + 1) * n].iter_mut().zip(b) {
            *yv += bv;
        }
    }
}

/// `dx[m×k] (+)= dy[m×n] · w[k×n]ᵀ`.
pub fn matmul_bt(dy: &[F], w: &[F], dx: &mut [F], m: usize, n: usize, k: usize, accumulate: bool) {
    Packed::transposed(w, n, k).mul(dy, dx, m, accumulate);
}

/// `dw[k×n] += x[m×k]ᵀ · dy[m×n]`: `dy` packed as the right-hand side (its `m` rows are
/// the reduction), and each 4 columns of `x` gathered into the interleaved left-hand
/// block, so no transpose is formed. The same sums in the same order as
/// `matmul(xᵀ, dy, dw, k, m, n, true)` with the transpose formed.
pub fn matmul_at(x: &[F], dy: &[F], dw: &mut [F], m: usize, k: usize, n: usize) {
    if m == 0 {
        return;
    }
    let p = Packed::new(dy, m, n);
    let x = &x[..m * k];
    let mut xp = vec![0.0 as F; m * RB];
    for i0 in (0..k).step_by(RB) {
        let rows = RB.min(k - i0);
        if rows < RB {
            xp.fill(0.0);
        }
        for (d, xr) in xp.chunks_exact_mut(RB).zip(x.chunks_exact(k)) {
            copy_n::<RB>(&mut d[..rows], &xr[i0..i0 + rows]);
        }
        p.block_row(&xp, &mut dw[i0 * n..(i0 + rows) * n], rows, true);
    }
}

/// `db[n] += Σ_rows dy[m×n]`.
pub fn col_sum(dy: &[F], db: &mut [F], m: usize, n: usize) {
    for i in 0..m {
        for (d, &v) in db.iter_mut().zip(&dy[i * n..(i + 1) * n]) {
            *d += v;
        }
    }
}

/// A dense layer `Y = X · W + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Param,
    pub b: Param,
    pub input: usize,
    pub output: usize,
}

impl Linear {
    pub fn new(input: usize, output: usize, rng: &mut Rng) -> Self {
        Linear {
            w: Param::new(input * output, input, rng),
            b: Param::new(output, input, rng),
            input,
            output,
        }
    }

    pub fn forward(&self, x: &[F], y: &mut [F], m: usize) {
        matmul(x, &self.w.w, y, m, self.input, self.output, false);
        add_bias(y, &self.b.w, m, self.output);
    }

    /// Accumulate the weight gradients; write `dx` if asked.
    pub fn backward(&mut self, x: &[F], dy: &[F], dx: Option<&mut [F]>, m: usize) {
        matmul_at(x, dy, &mut self.w.g, m, self.input, self.output);
        col_sum(dy, &mut self.b.g, m, self.output);
        if let Some(dx) = dx {
            matmul_bt(dy, &self.w.w, dx, m, self.output, self.input, false);
        }
    }

    pub fn params(&mut self) -> [&mut Param; 2] {
        [&mut self.w, &mut self.b]
    }
}

/// A GRU layer (PyTorch's equations, gates ordered r, z, n):
/// r = σ(Wᵢᵣx + bᵢᵣ + Wₕᵣh + bₕᵣ), z = σ(…), n = tanh(Wᵢₙx + bᵢₙ + r ⊙ (Wₕₙh + bₕₙ)),
/// h' = (1 − z) ⊙ n + z ⊙ h.
#[derive(Clone, Debug)]
pub struct Gru {
    pub wi: Param,
    pub wh: Param,
    pub bi: Param,
    pub bh: Param,
    pub input: usize,
    pub hidden: usize,
}

/// What the GRU's backward pass needs from the forward pass.
#[derive(Default, Clone, Debug)]
pub struct GruTrace {
    pub steps: usize,
    pub batch: usize,
    /// Input projections `X · Wᵢ + bᵢ`, `[T·B × 3H]`.
    pub gi: Vec<F>,
    /// Hidden states, `[(T+1)·B × H]`; block 0 is h₀ = 0.
    pub hs: Vec<F>,
    pub r: Vec<F>,
    pub z: Vec<F>,
    pub n: Vec<F>,
    pub ghn: Vec<F>,
    /// Written by [`Gru::backward_projected`]: d(loss)/d(gi), `[T·B × 3H]`.
    pub dgi: Vec<F>,
    /// Its scratch: d(loss)/d(Wₕh + bₕ) for every step.
    dgh: Vec<F>,
}

impl GruTrace {
    /// The outputs h₁…h_T, `[T·B × H]`.
    pub fn outputs(&self, hidden: usize) -> &[F] {
        &self.hs[self.batch * hidden..]
    }
}

impl Gru {
    pub fn new(input: usize, hidden: usize, rng: &mut Rng) -> Self {
        Gru {
            wi: Param::new(input * 3 * hidden, hidden, rng),
            wh: Param::new(hidden * 3 * hidden, hidden, rng),
            bi: Param::new(3 * hidden, hidden, rng),
            bh: Param::new(3 * hidden, hidden, rng),
            input,
            hidden,
        }
    }

    pub fn params(&mut self) -> [&mut Param; 4] {
        [&mut self.wi, &mut self.wh, &mut self.bi, &mut self.bh]
    }

    /// One step for a batch: `h` becomes the next state from `h_prev` (B×H). `gi` holds
    /// the input projections (B×3H); `gh` is scratch (B×3H); r, z, n and Wₕₙh + bₕₙ are
    /// recorded into `rec` (each B×H).
    #[allow(clippy::too_many_arguments)]
    fn cell(
        &self,
        wh: &Packed,
        gi: &[F],
        h_prev: &[F],
        h: &mut [F],
        gh: &mut [F],
        b: usize,
        rec: [&mut [F]; 4],
    ) {
        let hd = self.hidden;
        wh.mul(h_prev, gh, b, false);
        add_bias(gh, &self.bh.w, b, 3 * hd);
        let [rr, zz, nn, gg] = rec;
        for i in 0..b {
            let g = &gi[i * 3 * hd..(i + 1) * 3 * hd];
            let q = &gh[i * 3 * hd..(i + 1) * 3 * hd];
            let s = i * hd..(i + 1) * hd;
            let (hp, ho) = (&h_prev[s.clone()], &mut h[s.clone()]);
            let (rr, zz, nn, gg) = (
                &mut rr[s.clone()],
                &mut zz[s.clone()],
                &mut nn[s.clone()],
                &mut gg[s],
            );
            let (gr, gz, gn) = (&g[..hd], &g[hd..2 * hd], &g[2 * hd..3 * hd]);
            let (qr, qz, qn) = (&q[..hd], &q[hd..2 * hd], &q[2 * hd..3 * hd]);
            gru_gates(gr, gz, gn, qr, qz, qn, hp, ho, rr, zz, nn, gg);
        }
    }

    /// Run over `steps` steps of a batch of `batch` sequences; `x` is `[T·B × input]`.
    pub fn forward(&self, x: &[F], steps: usize, batch: usize, tr: &mut GruTrace) {
        let rows = steps * batch;
        let mut gi = std::mem::take(&mut tr.gi);
        gi.resize(rows * 3 * self.hidden, 0.0);
        matmul(
            x,
            &self.wi.w,
            &mut gi,
            rows,
            self.input,
            3 * self.hidden,
            false,
        );
        add_bias(&mut gi, &self.bi.w, rows, 3 * self.hidden);
        self.forward_projected(gi, steps, batch, tr);
    }

    /// [`Gru::forward`] from precomputed input projections `gi` (`[T·B × 3H]`).
    pub fn forward_projected(&self, gi: Vec<F>, steps: usize, batch: usize, tr: &mut GruTrace) {
        let hd = self.hidden;
        let rows = steps * batch;
        tr.steps = steps;
        tr.batch = batch;
        tr.gi = gi;
        tr.hs.clear();
        tr.hs.resize((steps + 1) * batch * hd, 0.0);
        for v in [&mut tr.r, &mut tr.z, &mut tr.n, &mut tr.ghn] {
            v.resize(rows * hd, 0.0);
        }
        let mut gh = vec![0.0; batch * 3 * hd];
        let bh = batch * hd;
        let wh = Packed::new(&self.wh.w, hd, 3 * hd);
        for t in 0..steps {
            let (before, after) = tr.hs.split_at_mut((t + 1) * bh);
            let h_prev = &before[t * bh..];
            let h = &mut after[..bh];
            let s = t * bh..(t + 1) * bh;
            self.cell(
                &wh,
                &tr.gi[t * batch * 3 * hd..(t + 1) * batch * 3 * hd],
                h_prev,
                h,
                &mut gh,
                batch,
                [
                    &mut tr.r[s.clone()],
                    &mut tr.z[s.clone()],
                    &mut tr.n[s.clone()],
                    &mut tr.ghn[s],
                ],
            );
        }
    }

    /// One step with no trace (sampling): `h` (B×H) becomes the next state.
    pub fn step(&self, x: &[F], h: &mut [F], batch: usize, scratch: &mut Vec<F>) {
        let hd = self.hidden;
        let mut gi = vec![0.0; batch * 3 * hd];
        matmul(x, &self.wi.w, &mut gi, batch, self.input, 3 * hd, false);
        add_bias(&mut gi, &self.bi.w, batch, 3 * hd);
        scratch.resize(batch * 7 * hd, 0.0);
        let prev = h.to_vec();
        let (gh, rest) = scratch.split_at_mut(batch * 3 * hd);
        let (r, rest) = rest.split_at_mut(batch * hd);
        let (z, rest) = rest.split_at_mut(batch * hd);
        let (n, g) = rest.split_at_mut(batch * hd);
        let wh = Packed::new(&self.wh.w, hd, 3 * hd);
        self.cell(&wh, &gi, &prev, h, gh, batch, [r, z, n, g]);
    }

    /// Backward through time. `dh_out` is the loss gradient on h₁…h_T (`[T·B × H]`);
    /// accumulates all weight gradients and writes `dx` (`[T·B × input]`) if asked.
    pub fn backward(&mut self, x: &[F], tr: &mut GruTrace, dh_out: &[F], dx: Option<&mut [F]>) {
        let (steps, batch, hd) = (tr.steps, tr.batch, self.hidden);
        self.backward_projected(tr, dh_out);
        let dgi = &tr.dgi;
        let rows = steps * batch;
        matmul_at(x, dgi, &mut self.wi.g, rows, self.input, 3 * hd);
        col_sum(dgi, &mut self.bi.g, rows, 3 * hd);
        if let Some(dx) = dx {
            matmul_bt(dgi, &self.wi.w, dx, rows, 3 * hd, self.input, false);
        }
    }

    /// Backward through time down to the input projections: accumulates the recurrent
    /// gradients (Wₕ, bₕ) and leaves d(loss)/d(gi) in `tr.dgi`. Only dh flows step by
    /// step; the recurrent weights' gradient is one product over all steps at the end
    /// (`Wₕ += Hᵀ_prev · dGh`), a long reduction that keeps the accumulators in registers.
    pub fn backward_projected(&mut self, tr: &mut GruTrace, dh_out: &[F]) {
        let (steps, batch, hd) = (tr.steps, tr.batch, self.hidden);
        let bh = batch * hd;
        let rows = steps * batch;
        let mut dgi = std::mem::take(&mut tr.dgi);
        let mut dgh_all = std::mem::take(&mut tr.dgh);
        // Every entry is written below: no need to clear.
        dgi.resize(rows * 3 * hd, 0.0);
        dgh_all.resize(rows * 3 * hd, 0.0);
        let mut dh = vec![0.0; bh];
        let wht = Packed::transposed(&self.wh.w, 3 * hd, hd);
        for t in (0..steps).rev() {
            let h_prev = &tr.hs[t * bh..(t + 1) * bh];
            for (d, &o) in dh.iter_mut().zip(&dh_out[t * bh..(t + 1) * bh]) {
                *d += o;
            }
            let span = t * batch * 3 * hd..(t + 1) * batch * 3 * hd;
            let dgi_t = &mut dgi[span.clone()];
            let dgh = &mut dgh_all[span];
            for i in 0..batch {
                // Every slice cut to `hd` first: no bounds checks in the loop.
                let at = t * bh + i * hd;
                let (rs, zs) = (&tr.r[at..at + hd], &tr.z[at..at + hd]);
                let (ns, gs) = (&tr.n[at..at + hd], &tr.ghn[at..at + hd]);
                let hp = &h_prev[i * hd..(i + 1) * hd];
                let dhi = &mut dh[i * hd..(i + 1) * hd];
                let (ar, rest) = dgi_t[i * 3 * hd..(i + 1) * 3 * hd].split_at_mut(hd);
                let (az, an) = rest.split_at_mut(hd);
                let (hr, rest) = dgh[i * 3 * hd..(i + 1) * 3 * hd].split_at_mut(hd);
                let (hz, hn) = rest.split_at_mut(hd);
                gru_gates_backward(rs, zs, ns, gs, hp, dhi, ar, az, an, hr, hz, hn);
            }
            wht.mul(dgh, &mut dh, batch, true);
        }
        matmul_at(
            &tr.hs[..rows * hd],
            &dgh_all,
            &mut self.wh.g,
            rows,
            hd,
            3 * hd,
        );
        col_sum(&dgh_all, &mut self.bh.g, rows, 3 * hd);
        tr.dgi = dgi;
        tr.dgh = dgh_all;
    }
}

/// One row of GRU gates: from the input projections (`gr`, `gz`, `gn`), the recurrent
/// ones (`qr`, `qz`, `qn`) and the previous state `hp`, the new state and what backward
/// needs (r, z, n and Wₕₙh + bₕₙ). The slices come in as arguments of their own (not
/// inlined), so that LLVM knows they do not overlap and vectorises the loop.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn gru_gates(
    gr: &[F],
    gz: &[F],
    gn: &[F],
    qr: &[F],
    qz: &[F],
    qn: &[F],
    hp: &[F],
    ho: &mut [F],
    rr: &mut [F],
    zz: &mut [F],
    nn: &mut [F],
    gg: &mut [F],
) {
    let hd = hp.len();
    let (gr, gz, gn, qr, qz, qn) = (
        &gr[..hd],
        &gz[..hd],
        &gn[..hd],
        &qr[..hd],
        &qz[..hd],
        &qn[..hd],
    );
    let (ho, rr, zz, nn, gg) = (
        &mut ho[..hd],
        &mut rr[..hd],
        &mut zz[..hd],
        &mut nn[..hd],
        &mut gg[..hd],
    );
    for j in 0..hd {
        let r = sigmoid(gr[j] + qr[j]);
        let z = sigmoid(gz[j] + qz[j]);
        let ghn = qn[j];
        let n = tanh(gn[j] + r * ghn);
        ho[j] = (1.0 - z) * n + z * hp[j];
        rr[j] = r;
        zz[j] = z;
        nn[j] = n;
        gg[j] = ghn;
    }
}

/// Backward of [`gru_gates`] for one row: from the recorded r, z, n, Wₕₙh + bₕₙ and the
/// previous state, and the state's gradient `dh` (replaced by its share for the previous
/// state), the gradients of the input projections (`ar`, `az`, `an`) and of the
/// recurrent ones (`hr`, `hz`, `hn`).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn gru_gates_backward(
    rs: &[F],
    zs: &[F],
    ns: &[F],
    gs: &[F],
    hp: &[F],
    dh: &mut [F],
    ar: &mut [F],
    az: &mut [F],
    an: &mut [F],
    hr: &mut [F],
    hz: &mut [F],
    hn: &mut [F],
) {
    let hd = dh.len();
    let (rs, zs, ns, gs, hp) = (&rs[..hd], &zs[..hd], &ns[..hd], &gs[..hd], &hp[..hd]);
    let (ar, az, an) = (&mut ar[..hd], &mut az[..hd], &mut an[..hd]);
    let (hr, hz, hn) = (&mut hr[..hd], &mut hz[..hd], &mut hn[..hd]);
    for j in 0..hd {
        let (r, z, n, ghn) = (rs[j], zs[j], ns[j], gs[j]);
        let d = dh[j];
        let dn = d * (1.0 - z);
        let dz = d * (hp[j] - n);
        let dan = dn * (1.0 - n * n);
        let dr = dan * ghn;
        let dar = dr * r * (1.0 - r);
        let daz = dz * z * (1.0 - z);
        ar[j] = dar;
        az[j] = daz;
        an[j] = dan;
        hr[j] = dar;
        hz[j] = daz;
        hn[j] = dan * r;
        dh[j] = d * z;
    }
}

/// An LSTM layer (PyTorch's equations, gates ordered i, f, g, o; one bias vector, which
/// is equivalent to PyTorch's two): c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c').
#[derive(Clone, Debug)]
pub struct Lstm {
    pub wi: Param,
    pub wh: Param,
    pub b: Param,
    pub input: usize,
    pub hidden: usize,
}

#[derive(Default, Clone, Debug)]
pub struct LstmTrace {
    pub steps: usize,
    pub batch: usize,
    /// Hidden and cell states, `[(T+1)·B × H]`; block 0 is zero.
    pub hs: Vec<F>,
    pub cs: Vec<F>,
    /// Gate activations i, f, g, o, `[T·B × 4H]`.
    pub gates: Vec<F>,
}

impl Lstm {
    pub fn new(input: usize, hidden: usize, rng: &mut Rng) -> Self {
        Lstm {
            wi: Param::new(input * 4 * hidden, hidden, rng),
            wh: Param::new(hidden * 4 * hidden, hidden, rng),
            b: Param::new(4 * hidden, hidden, rng),
            input,
            hidden,
        }
    }

    pub fn params(&mut self) -> [&mut Param; 3] {
        [&mut self.wi, &mut self.wh, &mut self.b]
    }

    pub fn forward(&self, x: &[F], steps: usize, batch: usize, tr: &mut LstmTrace) {
        let hd = self.hidden;
        let (rows, bh) = (steps * batch, batch * hd);
        tr.steps = steps;
        tr.batch = batch;
        tr.gates.resize(rows * 4 * hd, 0.0);
        matmul(
            x,
            &self.wi.w,
            &mut tr.gates,
            rows,
            self.input,
            4 * hd,
            false,
        );
        add_bias(&mut tr.gates, &self.b.w, rows, 4 * hd);
        tr.hs.clear();
        tr.hs.resize((steps + 1) * bh, 0.0);
        tr.cs.clear();
        tr.cs.resize((steps + 1) * bh, 0.0);
        let wh = Packed::new(&self.wh.w, hd, 4 * hd);
        for t in 0..steps {
            let g = &mut tr.gates[t * batch * 4 * hd..(t + 1) * batch * 4 * hd];
            wh.mul(&tr.hs[t * bh..(t + 1) * bh], g, batch, true);
            let (hb, ha) = tr.hs.split_at_mut((t + 1) * bh);
            let (cb, ca) = tr.cs.split_at_mut((t + 1) * bh);
            let _ = hb;
            let c_prev = &cb[t * bh..];
            for i in 0..batch {
                let gr = &mut g[i * 4 * hd..(i + 1) * 4 * hd];
                for j in 0..hd {
                    let ig = sigmoid(gr[j]);
                    let fg = sigmoid(gr[hd + j]);
                    let gg = tanh(gr[2 * hd + j]);
                    let og = sigmoid(gr[3 * hd + j]);
                    gr[j] = ig;
                    gr[hd + j] = fg;
                    gr[2 * hd + j] = gg;
                    gr[3 * hd + j] = og;
                    let c = fg * c_prev[i * hd + j] + ig * gg;
                    ca[i * hd + j] = c;
                    ha[i * hd + j] = og * tanh(c);
                }
            }
        }
    }

    /// Backward through time from gradients on h₁…h_T; accumulates weight gradients.
    pub fn backward(&mut self, x: &[F], tr: &LstmTrace, dh_out: &[F]) {
        let (steps, batch, hd) = (tr.steps, tr.batch, self.hidden);
        let bh = batch * hd;
        let mut dgates = vec![0.0; steps * batch * 4 * hd];
        let mut dh = vec![0.0; bh];
        let mut dc = vec![0.0; bh];
        let wht = Packed::transposed(&self.wh.w, 4 * hd, hd);
        for t in (0..steps).rev() {
            for (d, &o) in dh.iter_mut().zip(&dh_out[t * bh..(t + 1) * bh]) {
                *d += o;
            }
            let c_prev = &tr.cs[t * bh..(t + 1) * bh];
            let c_now = &tr.cs[(t + 1) * bh..(t + 2) * bh];
            let g = &tr.gates[t * batch * 4 * hd..(t + 1) * batch * 4 * hd];
            let dg = &mut dgates[t * batch * 4 * hd..(t + 1) * batch * 4 * hd];
            for i in 0..batch {
                for j in 0..hd {
                    let k = i * hd + j;
                    let o4 = i * 4 * hd;
                    let (ig, fg, gg, og) = (
                        g[o4 + j],
                        g[o4 + hd + j],
                        g[o4 + 2 * hd + j],
                        g[o4 + 3 * hd + j],
                    );
                    let tc = tanh(c_now[k]);
                    let d_o = dh[k] * tc;
                    let dcc = dc[k] + dh[k] * og * (1.0 - tc * tc);
                    dg[o4 + j] = dcc * gg * ig * (1.0 - ig);
                    dg[o4 + hd + j] = dcc * c_prev[k] * fg * (1.0 - fg);
                    dg[o4 + 2 * hd + j] = dcc * ig * (1.0 - gg * gg);
                    dg[o4 + 3 * hd + j] = d_o * og * (1.0 - og);
                    dc[k] = dcc * fg;
                }
            }
            matmul_at(
                &tr.hs[t * bh..(t + 1) * bh],
                dg,
                &mut self.wh.g,
                batch,
                hd,
                4 * hd,
            );
            wht.mul(dg, &mut dh, batch, false);
        }
        let rows = steps * batch;
        matmul_at(x, &dgates, &mut self.wi.g, rows, self.input, 4 * hd);
        col_sum(&dgates, &mut self.b.g, rows, 4 * hd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked product computes each output as the plain loop does (`y + x₀w₀ +
    /// x₁w₁ + …`, in order), so the results are the same bits, whatever the shape.
    #[test]
    fn matmul_equals_the_plain_triple_loop() {
        let mut rng = Rng::new(3);
        for (m, k, n) in [
            (1, 1, 1),
            (4, 0, 3),
            (5, 3, 7),
            (8, 4, 8),
            (9, 9, 19),
            (33, 18, 96),
        ] {
            for accumulate in [false, true] {
                let x: Vec<F> = (0..m * k).map(|_| rng.normal()).collect();
                let w: Vec<F> = (0..k * n).map(|_| rng.normal()).collect();
                let y0: Vec<F> = (0..m * n).map(|_| rng.normal()).collect();
                let mut y = y0.clone();
                matmul(&x, &w, &mut y, m, k, n, accumulate);
                for i in 0..m {
                    for j in 0..n {
                        let mut s = if accumulate { y0[i * n + j] } else { 0.0 };
                        for kk in 0..k {
                            s += x[i * k + kk] * w[kk * n + j];
                        }
                        assert_eq!(
                            s.to_bits(),
                            y[i * n + j].to_bits(),
                            "{m}×{k}×{n} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    /// The transposed products are the plain loops' sums, bit for bit.
    #[test]
    fn transposed_products_equal_the_plain_loops() {
        let mut rng = Rng::new(4);
        for (m, k, n) in [(1, 1, 1), (5, 3, 7), (8, 4, 8), (9, 9, 19), (81, 18, 96)] {
            let x: Vec<F> = (0..m * k).map(|_| rng.normal()).collect();
            let dy: Vec<F> = (0..m * n).map(|_| rng.normal()).collect();
            let w: Vec<F> = (0..k * n).map(|_| rng.normal()).collect();
            let dw0: Vec<F> = (0..k * n).map(|_| rng.normal()).collect();
            let mut dw = dw0.clone();
            matmul_at(&x, &dy, &mut dw, m, k, n);
            for i in 0..k {
                for j in 0..n {
                    let mut s = dw0[i * n + j];
                    for r in 0..m {
                        s += x[r * k + i] * dy[r * n + j];
                    }
                    assert_eq!(s.to_bits(), dw[i * n + j].to_bits(), "at {m}×{k}×{n}");
                }
            }
            let mut dx = vec![0.0; m * k];
            matmul_bt(&dy, &w, &mut dx, m, n, k, false);
            for r in 0..m {
                for i in 0..k {
                    let mut s = 0.0;
                    for j in 0..n {
                        s += dy[r * n + j] * w[i * n + j];
                    }
                    assert_eq!(s.to_bits(), dx[r * k + i].to_bits(), "bt at {m}×{k}×{n}");
                }
            }
        }
    }

    /// The `f32` logarithm is within 1 ulp of the exact one over many decades.
    #[test]
    fn ln_f32_is_within_an_ulp() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            for v in [x, x * 1.000_001, x * 1.37, x * 2.9] {
                let got = ln_f32(v);
                let want = f64::from(v).ln();
                let ulp = f64::from(got.abs().max(1e-30)) * f64::from(f32::EPSILON);
                assert!(
                    (f64::from(got) - want).abs() <= ulp,
                    "ln({v}) = {got}, exact {want}"
                );
            }
            x *= 1.1;
        }
    }

    /// Finite-difference check of the LSTM (loss = Σ h_T · v).
    #[test]
    fn lstm_gradients() {
        let mut rng = Rng::new(5);
        let (inp, hd, steps, batch) = (3, 4, 5, 2);
        let mut l = Lstm::new(inp, hd, &mut rng);
        let x: Vec<F> = (0..steps * batch * inp).map(|_| rng.normal()).collect();
        let v: Vec<F> = (0..steps * batch * hd).map(|_| rng.normal()).collect();
        let loss = |l: &Lstm| {
            let mut tr = LstmTrace::default();
            l.forward(&x, steps, batch, &mut tr);
            tr.hs[batch * hd..]
                .iter()
                .zip(&v)
                .map(|(a, b)| a * b)
                .sum::<F>()
        };
        let mut tr = LstmTrace::default();
        l.forward(&x, steps, batch, &mut tr);
        l.backward(&x, &tr, &v);
        for pi in 0..3 {
            for k in 0..l.params()[pi].w.len() {
                let g = l.params()[pi].g[k];
                let o = l.params()[pi].w[k];
                l.params()[pi].w[k] = o + 1e-6;
                let lp = loss(&l);
                l.params()[pi].w[k] = o - 1e-6;
                let lm = loss(&l);
                l.params()[pi].w[k] = o;
                let num = (lp - lm) / 2e-6;
                assert!(
                    (num - g).abs() < 1e-6 * (1.0 + num.abs()),
                    "lstm param {pi}[{k}]: {num} vs {g}"
                );
            }
        }
    }

    /// Finite-difference check of the GRU including the input gradient.
    #[test]
    fn gru_gradients_with_inputs() {
        let mut rng = Rng::new(9);
        let (inp, hd, steps, batch) = (3, 4, 5, 2);
        let mut gru = Gru::new(inp, hd, &mut rng);
        let mut x: Vec<F> = (0..steps * batch * inp).map(|_| rng.normal()).collect();
        let v: Vec<F> = (0..steps * batch * hd).map(|_| rng.normal()).collect();
        let loss = |g: &Gru, x: &[F]| {
            let mut tr = GruTrace::default();
            g.forward(x, steps, batch, &mut tr);
            tr.outputs(hd).iter().zip(&v).map(|(a, b)| a * b).sum::<F>()
        };
        let mut tr = GruTrace::default();
        gru.forward(&x, steps, batch, &mut tr);
        let mut dx = vec![0.0; x.len()];
        gru.backward(&x, &mut tr, &v, Some(&mut dx));
        for k in 0..x.len() {
            let o = x[k];
            x[k] = o + 1e-6;
            let lp = loss(&gru, &x);
            x[k] = o - 1e-6;
            let lm = loss(&gru, &x);
            x[k] = o;
            let num = (lp - lm) / 2e-6;
            assert!(
                (num - dx[k]).abs() < 1e-6 * (1.0 + num.abs()),
                "dx[{k}]: {num} vs {}",
                dx[k]
            );
        }
        for pi in 0..4 {
            for k in 0..gru.params()[pi].w.len() {
                let g = gru.params()[pi].g[k];
                let o = gru.params()[pi].w[k];
                gru.params()[pi].w[k] = o + 1e-6;
                let lp = loss(&gru, &x);
                gru.params()[pi].w[k] = o - 1e-6;
                let lm = loss(&gru, &x);
                gru.params()[pi].w[k] = o;
                let num = (lp - lm) / 2e-6;
                assert!(
                    (num - g).abs() < 1e-6 * (1.0 + num.abs()),
                    "gru param {pi}[{k}]: {num} vs {g}"
                );
            }
        }
    }
}
