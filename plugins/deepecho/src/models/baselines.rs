//! RealDataBaseline and UniformBaseline.

use super::Model;
use crate::data::{Dataset, Kind, Sequence};
use crate::rng::Rng;
use guest_sdk::Result;
use std::collections::HashMap;

/// Returns the real sequences of the requested entities.
#[derive(Default)]
pub struct RealData {
    by_entity: HashMap<String, Sequence>,
    all: Vec<Sequence>,
}

impl Model for RealData {
    fn fit(&mut self, ds: &Dataset, _rng: &mut Rng) -> Result<()> {
        self.all = ds.seqs.clone();
        self.by_entity = ds
            .seqs
            .iter()
            .map(|s| (s.entity.clone(), s.clone()))
            .collect();
        Ok(())
    }

    fn sample(
        &mut self,
        _ds: &Dataset,
        contexts: &[Sequence],
        rng: &mut Rng,
    ) -> Result<Vec<Sequence>> {
        Ok(contexts
            .iter()
            .map(|c| match self.by_entity.get(&c.entity) {
                Some(s) => s.clone(),
                // An unseen entity: a random real sequence with the requested context.
                None => {
                    let mut s = self.all[rng.below(self.all.len())].clone();
                    s.entity = c.entity.clone();
                    s.context = c.context.clone();
                    s
                }
            })
            .collect())
    }
}

/// Sequences of the mean length; every value uniform over the column's observed range.
#[derive(Default)]
pub struct Uniform {
    len: usize,
    ranges: Vec<Option<(f64, f64)>>,
    cats: Vec<usize>,
}

impl Model for Uniform {
    fn fit(&mut self, ds: &Dataset, _rng: &mut Rng) -> Result<()> {
        let n = ds.seqs.len().max(1);
        let total: usize = ds.seqs.iter().map(|s| s.len).sum();
        self.len = ((total as f64 / n as f64).round() as usize).max(1);
        let d = ds.n_dims();
        self.ranges = vec![None; d];
        self.cats = ds.data_cols.iter().map(|c| c.n_categories()).collect();
        for s in &ds.seqs {
            for (i, &v) in s.data.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let r = &mut self.ranges[i % d];
                *r = Some(r.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
            }
        }
        Ok(())
    }

    fn sample(
        &mut self,
        ds: &Dataset,
        contexts: &[Sequence],
        rng: &mut Rng,
    ) -> Result<Vec<Sequence>> {
        let d = ds.n_dims();
        Ok(contexts
            .iter()
            .map(|c| {
                let mut data = Vec::with_capacity(self.len * d);
                for _ in 0..self.len {
                    for (j, col) in ds.data_cols.iter().enumerate() {
                        data.push(match (&col.kind, self.ranges[j]) {
                            (Kind::Categorical(_), Some(_)) => {
                                rng.below(self.cats[j].max(1)) as f64
                            }
                            (Kind::Numeric, Some((lo, hi))) => rng.uniform(lo, hi),
                            (_, None) => f64::NAN,
                        });
                    }
                }
                Sequence {
                    entity: c.entity.clone(),
                    context: c.context.clone(),
                    data,
                    len: self.len,
                }
            })
            .collect())
    }
}
