//! The models: fit on a dataset, then sample one synthetic sequence per given context.

use crate::data::{Dataset, Sequence};
use crate::rng::Rng;
use guest_sdk::Result;

pub mod baselines;
pub mod gan;
pub mod nn;
pub mod par;

pub const MODEL_NAMES: &[&str] = &[
    "RealDataBaseline",
    "UniformBaseline",
    "PARModel",
    "BasicGANModel",
];

/// A model's parameters (after `epochs` override).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen_lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dis_lr: Option<f64>,
}

/// The parameters each model accepts (others are rejected by `plan`).
pub fn accepted_params(model: &str) -> &'static [&'static str] {
    match model {
        "PARModel" => &["epochs", "sample_size"],
        "BasicGANModel" => &["epochs", "latent_size", "hidden_size", "gen_lr", "dis_lr"],
        _ => &[],
    }
}

pub trait Model {
    /// Learn from the dataset's sequences.
    fn fit(&mut self, ds: &Dataset, rng: &mut Rng) -> Result<()>;
    /// One synthetic sequence per given sequence's context (entity ids are kept).
    fn sample(
        &mut self,
        ds: &Dataset,
        contexts: &[Sequence],
        rng: &mut Rng,
    ) -> Result<Vec<Sequence>>;
}

pub fn build(name: &str, p: &ModelParams) -> Result<Box<dyn Model>> {
    Ok(match name {
        "RealDataBaseline" => Box::new(baselines::RealData::default()),
        "UniformBaseline" => Box::new(baselines::Uniform::default()),
        "PARModel" => Box::new(par::Par::new(
            p.epochs.unwrap_or(128),
            p.sample_size.unwrap_or(1).max(1),
        )),
        "BasicGANModel" => Box::new(gan::Gan::new(
            p.epochs.unwrap_or(128),
            p.latent_size.unwrap_or(32),
            p.hidden_size.unwrap_or(16),
            p.gen_lr.unwrap_or(1e-3),
            p.dis_lr.unwrap_or(1e-3),
        )),
        other => guest_sdk::bail!("unknown model `{other}`"),
    })
}
