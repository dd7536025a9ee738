//! A time-series forest (Deng et al. 2013, as in sktime's `TimeSeriesForestClassifier`):
//! each tree sees `sqrt(L)` random intervals of the series and, for each, the mean, the
//! standard deviation and the least-squares slope; trees are CART trees grown to purity
//! with the entropy criterion; the forest averages the trees' class probabilities.
//!
//! Multivariate sequences are concatenated dimension after dimension (sktime's
//! `ColumnConcatenator`). Intervals are drawn as fractions of the longest series, so
//! series of different lengths are handled; missing values are skipped.

use crate::rng::Rng;

const MIN_INTERVAL: usize = 3;

/// One concatenated series per entity.
pub type Series = Vec<f64>;

enum Node {
    Leaf(Vec<f64>),
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

struct Tree {
    intervals: Vec<(f64, f64)>,
    nodes: Vec<Node>,
}

pub struct Forest {
    trees: Vec<Tree>,
    n_classes: usize,
}

fn interval_features(s: &[f64], a: f64, b: f64, out: &mut Vec<f64>) {
    let l = s.len();
    if l == 0 {
        out.extend_from_slice(&[0.0, 0.0, 0.0]);
        return;
    }
    let mut start = (a * l as f64).floor() as usize;
    let mut end = (b * l as f64).ceil() as usize;
    end = end.min(l);
    start = start.min(l.saturating_sub(1));
    if end < start + MIN_INTERVAL.min(l) {
        end = (start + MIN_INTERVAL).min(l);
        start = end.saturating_sub(MIN_INTERVAL);
    }
    let seg = &s[start..end];
    let (n, sx, sy, sxx, sxy, syy) = if seg.len() < 1 << 16 && !seg.iter().any(|v| v.is_nan()) {
        complete_sums(seg)
    } else {
        sums_skipping_missing(seg)
    };
    if n == 0.0 {
        out.extend_from_slice(&[0.0, 0.0, 0.0]);
        return;
    }
    let mean = sy / n;
    let var = (syy / n - mean * mean).max(0.0);
    let den = n * sxx - sx * sx;
    let slope = if den.abs() > 1e-12 {
        (n * sxy - sx * sy) / den
    } else {
        0.0
    };
    out.extend_from_slice(&[mean, var.sqrt(), slope]);
}

/// (n, Σx, Σy, Σx², Σxy, Σy²) over the values `y` at positions `x` = 0, 1, 2, …, missing
/// values skipped, each sum accumulated in order.
fn sums_skipping_missing(seg: &[f64]) -> (f64, f64, f64, f64, f64, f64) {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in seg.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        let x = i as f64;
        n += 1.0;
        sx += x;
        sy += v;
        sxx += x * x;
        sxy += x * v;
        syy += v * v;
    }
    (n, sx, sy, sxx, sxy, syy)
}

/// [`sums_skipping_missing`] of a segment with no missing value, bit for bit: n, Σx and
/// Σx² are sums of integers below 2⁵³, which `f64` adds exactly, so they come from
/// closed forms; the other three are accumulated in the same order, four values per
/// iteration (fewer loop back-edges: each costs an epoch check in WebAssembly, across
/// which Cranelift keeps the sums on the stack; see bench/KERNELS.md).
fn complete_sums(seg: &[f64]) -> (f64, f64, f64, f64, f64, f64) {
    let len = seg.len() as u64;
    let (sx, sxx) = match len {
        0 => (0, 0),
        l => (l * (l - 1) / 2, (l - 1) * l * (2 * l - 1) / 6),
    };
    let (mut sy, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    let (chunks, rest) = seg.as_chunks::<4>();
    for (c, vs) in chunks.iter().enumerate() {
        for (u, &v) in vs.iter().enumerate() {
            let x = (4 * c + u) as f64;
            sy += v;
            sxy += x * v;
            syy += v * v;
        }
    }
    for (u, &v) in rest.iter().enumerate() {
        let x = (4 * chunks.len() + u) as f64;
        sy += v;
        sxy += x * v;
        syy += v * v;
    }
    (len as f64, sx as f64, sy, sxx as f64, sxy, syy)
}

fn entropy(counts: &[f64], total: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    let mut h = 0.0;
    for &c in counts {
        if c > 0.0 {
            let p = c / total;
            h -= p * p.ln();
        }
    }
    h
}

/// Scratch buffers of [`grow`], allocated once per tree.
#[derive(Default)]
struct Scratch {
    /// (feature value, class) of the node's samples, sorted by value.
    pairs: Vec<(f64, usize)>,
    left: Vec<f64>,
    right: Vec<f64>,
}

fn grow(
    x: &[Vec<f64>],
    y: &[usize],
    idx: &mut [usize],
    n_classes: usize,
    nodes: &mut Vec<Node>,
    depth: usize,
    scratch: &mut Scratch,
) -> usize {
    let mut counts = vec![0.0; n_classes];
    for &i in idx.iter() {
        counts[y[i]] += 1.0;
    }
    let n = idx.len() as f64;
    let me = nodes.len();
    let leaf = |counts: &[f64]| Node::Leaf(counts.iter().map(|c| c / n).collect());
    let parent_h = entropy(&counts, n);
    if parent_h <= 1e-12 || idx.len() < 2 || depth > 64 {
        nodes.push(leaf(&counts));
        return me;
    }
    let n_features = x[idx[0]].len();
    let mut best: Option<(f64, usize, f64)> = None; // (impurity, feature, threshold)
    let Scratch { pairs, left, right } = scratch;
    left.resize(n_classes, 0.0);
    right.resize(n_classes, 0.0);
    // `f` indexes each row's features (`x[i][f]`), not `x`.
    #[allow(clippy::needless_range_loop)]
    for f in 0..n_features {
        // Candidate thresholds lie between distinct consecutive values, and the class
        // counts left of one do not depend on the order of equal values: an unstable
        // sort of (value, class) pairs gives exactly the splits of a stable index sort.
        pairs.clear();
        pairs.extend(idx.iter().map(|&i| (x[i][f], y[i])));
        pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        left.iter_mut().for_each(|c| *c = 0.0);
        for k in 0..pairs.len() - 1 {
            left[pairs[k].1] += 1.0;
            let (v, w) = (pairs[k].0, pairs[k + 1].0);
            if v >= w {
                continue;
            }
            let nl = (k + 1) as f64;
            let nr = n - nl;
            for ((r, c), l) in right.iter_mut().zip(&counts).zip(left.iter()) {
                *r = c - l;
            }
            let imp = (nl * entropy(left, nl) + nr * entropy(right, nr)) / n;
            if best.is_none_or(|b| imp < b.0 - 1e-12) {
                best = Some((imp, f, 0.5 * (v + w)));
            }
        }
    }
    let Some((_, feature, threshold)) = best else {
        nodes.push(leaf(&counts));
        return me;
    };
    nodes.push(Node::Split {
        feature,
        threshold,
        left: 0,
        right: 0,
    });
    let mut split = 0;
    for k in 0..idx.len() {
        if x[idx[k]][feature] <= threshold {
            idx.swap(k, split);
            split += 1;
        }
    }
    let (l, r) = idx.split_at_mut(split);
    let li = grow(x, y, l, n_classes, nodes, depth + 1, scratch);
    let ri = grow(x, y, r, n_classes, nodes, depth + 1, scratch);
    nodes[me] = Node::Split {
        feature,
        threshold,
        left: li,
        right: ri,
    };
    me
}

impl Tree {
    fn features(&self, s: &[f64]) -> Vec<f64> {
        let mut f = Vec::with_capacity(self.intervals.len() * 3);
        for &(a, b) in &self.intervals {
            interval_features(s, a, b, &mut f);
        }
        f
    }

    fn predict(&self, s: &[f64]) -> &[f64] {
        let f = self.features(s);
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                Node::Leaf(p) => return p,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if f[*feature] <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
            }
        }
    }
}

impl Forest {
    pub fn fit(
        series: &[Series],
        y: &[usize],
        n_classes: usize,
        n_trees: usize,
        rng: &mut Rng,
    ) -> Forest {
        let lref = series
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(MIN_INTERVAL);
        let n_intervals = ((lref as f64).sqrt() as usize).max(1);
        let mut trees = Vec::with_capacity(n_trees);
        for _ in 0..n_trees {
            let intervals: Vec<(f64, f64)> = (0..n_intervals)
                .map(|_| {
                    let start = rng.below(lref - MIN_INTERVAL + 1);
                    let len = MIN_INTERVAL + rng.below(lref - start - MIN_INTERVAL + 1);
                    (
                        start as f64 / lref as f64,
                        (start + len) as f64 / lref as f64,
                    )
                })
                .collect();
            let mut tree = Tree {
                intervals,
                nodes: Vec::new(),
            };
            let x: Vec<Vec<f64>> = series.iter().map(|s| tree.features(s)).collect();
            let mut idx: Vec<usize> = (0..series.len()).collect();
            if !idx.is_empty() {
                grow(
                    &x,
                    y,
                    &mut idx,
                    n_classes,
                    &mut tree.nodes,
                    0,
                    &mut Scratch::default(),
                );
            } else {
                tree.nodes
                    .push(Node::Leaf(vec![1.0 / n_classes as f64; n_classes]));
            }
            trees.push(tree);
        }
        Forest { trees, n_classes }
    }

    pub fn predict(&self, s: &[f64]) -> usize {
        let mut p = vec![0.0; self.n_classes];
        for t in &self.trees {
            for (a, b) in p.iter_mut().zip(t.predict(s)) {
                *a += b;
            }
        }
        let mut best = 0;
        for k in 1..p.len() {
            if p[k] > p[best] {
                best = k;
            }
        }
        best
    }

    pub fn accuracy(&self, series: &[Series], y: &[usize]) -> f64 {
        if series.is_empty() {
            return 0.0;
        }
        let ok = series
            .iter()
            .zip(y)
            .filter(|(s, c)| self.predict(s) == **c)
            .count();
        ok as f64 / series.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_sums_equal_the_plain_loop_bit_for_bit() {
        let mut rng = Rng::new(1);
        for len in (0..40).chain([255, 1000, 4099]) {
            let seg: Vec<f64> = (0..len).map(|_| 1e3 * rng.normal()).collect();
            let a = complete_sums(&seg);
            let b = sums_skipping_missing(&seg);
            let bits = |t: (f64, f64, f64, f64, f64, f64)| {
                [t.0, t.1, t.2, t.3, t.4, t.5].map(f64::to_bits)
            };
            assert_eq!(bits(a), bits(b), "length {len}");
        }
    }
}
