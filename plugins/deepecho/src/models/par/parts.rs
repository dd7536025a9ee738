//! PAR's training batch in two parts, by sequence: the first half is computed by the
//! shard's own instance, the second by a helper (another instance of the plugin on a
//! thread of its own, where the run's `limits.threads` allows one) at the same time, or
//! by the shard's instance after the first. Either way the second part's loss and
//! gradients come from the same code on the same weights, and are added to the first
//! part's in the same order, so a fit gives the same bits with or without a helper.

use super::{Batch, Enc, Layout, Net, Work};
use crate::models::nn::F;
use crate::rng::Rng;
use guest_sdk::{Helper, Result, bail};
use std::cell::RefCell;

/// One part of the batch, with a network to compute its gradients on.
pub(super) struct Part {
    net: Net,
    batch: Batch,
    work: Work,
}

impl Part {
    /// The part's loss at `weights`, leaving its gradients in `self.net`.
    fn step(&mut self, weights: &[F]) -> Result<F> {
        let mut at = 0;
        for p in self.net.params() {
            let Some(w) = weights.get(at..at + p.w.len()) else {
                bail!(
                    "PARModel's helper got {} weights, fewer than its network has",
                    weights.len()
                );
            };
            p.w.copy_from_slice(w);
            p.zero_grad();
            at += p.w.len();
        }
        Ok(self.net.loss(&self.batch, &mut self.work, true))
    }
}

/// Every parameter's values (or gradients), in [`Net::params`] order.
pub(super) fn weights(net: &mut Net) -> Vec<F> {
    net.params()
        .iter()
        .flat_map(|p| p.w.iter().copied())
        .collect()
}

fn add_grads(net: &mut Net, grads: impl IntoIterator<Item = F>) {
    let mut grads = grads.into_iter();
    for p in net.params() {
        for (g, d) in p.g.iter_mut().zip(grads.by_ref()) {
            *g += d;
        }
    }
}

/// Where the second part is computed.
pub(super) enum Second {
    Empty,
    Here(Box<Part>),
    Helper(Helper),
}

impl Second {
    /// The second part, in a helper if one starts, else here.
    pub(super) fn start(net: &Net, batch: Batch) -> Second {
        if batch.batch == 0 {
            return Second::Empty;
        }
        match Helper::start() {
            Ok(helper) => {
                match helper
                    .send(&init_request(&net.layout, &batch))
                    .and_then(|()| helper.receive())
                {
                    Ok(_) => return Second::Helper(helper),
                    Err(e) => guest_sdk::warn!("PARModel computes without its helper: {e}"),
                }
            }
            Err(why) => guest_sdk::log(
                guest_sdk::Level::Debug,
                &format!("PARModel computes without a helper: {why}"),
            ),
        }
        Second::Here(Box::new(Part {
            net: net.clone(),
            batch,
            work: Work::default(),
        }))
    }

    /// Start the second part's step at `weights`: a helper works on it meanwhile.
    pub(super) fn begin(&mut self, weights: &[F]) -> Result<()> {
        if let Second::Helper(helper) = self {
            helper.send(&step_request(weights))?;
        }
        Ok(())
    }

    /// The second part's loss at `weights`, its gradients added to `net`'s.
    pub(super) fn finish(&mut self, weights: &[F], net: &mut Net) -> Result<F> {
        match self {
            Second::Empty => Ok(0.0),
            Second::Here(part) => {
                let loss = part.step(weights)?;
                let grads = grads(&mut part.net);
                add_grads(net, grads);
                Ok(loss)
            }
            Second::Helper(helper) => {
                let reply = helper
                    .receive()
                    .map_err(|e| guest_sdk::Error::new(format!("PARModel's helper: {e}")))?;
                let (loss, grads) = read_reply(&reply)?;
                if grads.len() != weights.len() {
                    bail!(
                        "PARModel's helper returned {} gradients for {} weights",
                        grads.len(),
                        weights.len()
                    );
                }
                add_grads(net, grads);
                Ok(loss)
            }
        }
    }
}

/// The request that sets a helper's part up.
pub(super) fn init_request(layout: &Layout, batch: &Batch) -> Vec<u8> {
    let mut w = Wire::default();
    w.bytes.push(b'I');
    w.layout(layout);
    w.batch(batch);
    w.bytes
}

/// The request for the part's loss and gradients at `weights`.
pub(super) fn step_request(weights: &[F]) -> Vec<u8> {
    let mut w = Wire::default();
    w.bytes.push(b'E');
    w.floats(weights);
    w.bytes
}

/// A step's reply: the loss and the gradients.
pub(super) fn read_reply(reply: &[u8]) -> Result<(F, Vec<F>)> {
    let mut r = Wire::reading(reply);
    Ok((r.read_float()?, r.read_floats()?))
}

pub(super) fn grads(net: &mut Net) -> Vec<F> {
    net.params()
        .iter()
        .flat_map(|p| p.g.iter().copied())
        .collect()
}

thread_local! {
    /// The part a helper instance serves (set by its first request).
    static SERVED: RefCell<Option<Part>> = const { RefCell::new(None) };
}

/// A helper's side: `I` (layout and batch) sets its part up, `E` (weights) answers
/// with the part's loss and gradients.
pub fn serve(request: &[u8]) -> Result<Vec<u8>> {
    let mut r = Wire::reading(request);
    match r.byte()? {
        b'I' => {
            let layout = r.read_layout()?;
            let batch = r.read_batch()?;
            // The weights arrive with every step; these are placeholders.
            let net = Net::with_layout(layout, &mut Rng::new(0));
            SERVED.with(|s| {
                *s.borrow_mut() = Some(Part {
                    net,
                    batch,
                    work: Work::default(),
                })
            });
            Ok(Vec::new())
        }
        b'E' => {
            let weights = r.read_floats()?;
            SERVED.with(|s| {
                let mut s = s.borrow_mut();
                let Some(part) = s.as_mut() else {
                    bail!("PARModel's helper was asked for a step before its part was set up");
                };
                let loss = part.step(&weights)?;
                let mut w = Wire::default();
                w.float(loss);
                w.floats(&grads(&mut part.net));
                Ok(w.bytes)
            })
        }
        other => bail!(
            "PARModel's helper got an unknown request `{}`",
            other.escape_ascii()
        ),
    }
}

/// A little-endian encoding of what a helper needs: lengths as `u64`, numbers as
/// their bits (NaN, which marks missing targets, included).
#[derive(Default)]
struct Wire<'a> {
    bytes: Vec<u8>,
    read: &'a [u8],
}

impl<'a> Wire<'a> {
    fn reading(bytes: &'a [u8]) -> Self {
        Wire {
            bytes: Vec::new(),
            read: bytes,
        }
    }

    fn size(&mut self, v: usize) {
        self.bytes.extend((v as u64).to_le_bytes());
    }
    fn float(&mut self, v: F) {
        self.bytes.extend(v.to_le_bytes());
    }
    fn floats(&mut self, v: &[F]) {
        self.size(v.len());
        for x in v {
            self.float(*x);
        }
    }
    fn f64(&mut self, v: f64) {
        self.bytes.extend(v.to_le_bytes());
    }
    fn u8s(&mut self, v: &[u8]) {
        self.size(v.len());
        self.bytes.extend_from_slice(v);
    }
    fn encs(&mut self, encs: &[Enc]) {
        self.size(encs.len());
        for e in encs {
            match *e {
                Enc::Num { mean, sd, nulls } => {
                    self.bytes.push(0);
                    self.f64(mean);
                    self.f64(sd);
                    self.bytes.push(nulls as u8);
                }
                Enc::Cat { k, nulls } => {
                    self.bytes.push(1);
                    self.size(k);
                    self.bytes.push(nulls as u8);
                }
            }
        }
    }
    fn layout(&mut self, l: &Layout) {
        self.encs(&l.data);
        self.encs(&l.ctx);
        for v in [l.n_in, l.n_out, l.data_in, l.ref_in] {
            self.size(v);
        }
    }
    fn batch(&mut self, b: &Batch) {
        for v in [b.steps, b.batch, b.whole] {
            self.size(v);
        }
        self.floats(&b.xd);
        self.u8s(&b.flag);
        self.floats(&b.ctx);
        self.floats(&b.targets);
        self.u8s(&b.kind);
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.read.len() < n {
            bail!("PARModel's helper got a truncated request");
        }
        let (head, rest) = self.read.split_at(n);
        self.read = rest;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn read_size(&mut self) -> Result<usize> {
        let b = self.take(8)?;
        let v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        usize::try_from(v)
            .map_err(|_| guest_sdk::Error::new("PARModel's helper got a size too large"))
    }
    fn read_float(&mut self) -> Result<F> {
        let b = self.take(size_of::<F>())?;
        Ok(F::from_le_bytes(b.try_into().expect("one float")))
    }
    fn read_floats(&mut self) -> Result<Vec<F>> {
        let n = self.read_size()?;
        let b = self.take(n.saturating_mul(size_of::<F>()))?;
        Ok(b.chunks_exact(size_of::<F>())
            .map(|c| F::from_le_bytes(c.try_into().expect("one float")))
            .collect())
    }
    fn read_f64(&mut self) -> Result<f64> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn read_u8s(&mut self) -> Result<Vec<u8>> {
        let n = self.read_size()?;
        Ok(self.take(n)?.to_vec())
    }
    fn read_encs(&mut self) -> Result<Vec<Enc>> {
        let n = self.read_size()?;
        (0..n)
            .map(|_| {
                Ok(match self.byte()? {
                    0 => Enc::Num {
                        mean: self.read_f64()?,
                        sd: self.read_f64()?,
                        nulls: self.byte()? != 0,
                    },
                    1 => Enc::Cat {
                        k: self.read_size()?,
                        nulls: self.byte()? != 0,
                    },
                    t => bail!("PARModel's helper got an unknown column encoding {t}"),
                })
            })
            .collect()
    }
    fn read_layout(&mut self) -> Result<Layout> {
        let (data, ctx) = (self.read_encs()?, self.read_encs()?);
        Ok(Layout {
            data,
            ctx,
            n_in: self.read_size()?,
            n_out: self.read_size()?,
            data_in: self.read_size()?,
            ref_in: self.read_size()?,
        })
    }
    fn read_batch(&mut self) -> Result<Batch> {
        Ok(Batch {
            steps: self.read_size()?,
            batch: self.read_size()?,
            whole: self.read_size()?,
            xd: self.read_floats()?,
            flag: self.read_u8s()?,
            ctx: self.read_floats()?,
            targets: self.read_floats()?,
            kind: self.read_u8s()?,
        })
    }
}
