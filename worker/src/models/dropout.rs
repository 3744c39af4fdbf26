//! Dropout that draws from the training run's own generator.
//!
//! Burn draws random tensors from one generator per backend, shared by every thread of the
//! process. Two runs trained side by side in one process (`cobb demo`'s two workers, or a
//! worker beside a classification) would take turns on it in the order their steps happen
//! to run, so neither run's masks would follow from its seed. Here the masks come from a
//! [`SplitMix64`] that the training loop gives its own thread ([`seed_thread`], re-seeded
//! each epoch, so a resumed run draws what an uninterrupted one would) and are uploaded as a
//! small tensor: dropout in cobb's models sits only on the head's `[batch, features]` input.
//! A thread with no generator of its own (a benchmark, a test) falls back to Burn's.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::TensorData;
use protocol::rng::SplitMix64;
use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<Option<SplitMix64>> = const { RefCell::new(None) };
}

/// Gives this thread its own dropout generator (`Some(seed)`) or takes it away (`None`).
pub fn seed_thread(seed: Option<u64>) {
    RNG.with(|r| *r.borrow_mut() = seed.map(SplitMix64::new));
}

/// Takes this thread's generator away when dropped: the end of a training run, however it
/// ends.
pub struct Scope(());

pub fn scope() -> Scope {
    Scope(())
}

impl Drop for Scope {
    fn drop(&mut self) {
        seed_thread(None);
    }
}

/// `layer` applied to `x`: what Burn's [`Dropout::forward`] does (nothing outside training,
/// or when the layer is frozen or its probability is 0), with the mask drawn from this
/// thread's generator when it has one.
pub fn apply<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - layer.prob;
    let dims = x.dims();
    let count: usize = dims.iter().product();
    let scale = (1.0 / keep) as f32;
    let mask = RNG
        .with(|r| r.borrow_mut().as_mut().map(|rng| (0..count).map(|_| if rng.chance(keep) { scale } else { 0.0 }).collect::<Vec<f32>>()));
    match mask {
        Some(mask) => {
            let mask = Tensor::<D>::from_data(TensorData::new(mask, dims.to_vec()), &x.device());
            x * mask
        }
        None => layer.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;

    fn masked(seed: u64) -> Vec<f32> {
        seed_thread(Some(seed));
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::ones([8, 64], &device);
        let out = apply(&DropoutConfig::new(0.25).init(), x).into_data().try_to_vec::<f32>().expect("f32");
        seed_thread(None);
        out
    }

    #[test]
    fn the_mask_follows_the_threads_seed_and_keeps_the_expectation() {
        let a = masked(7);
        assert_eq!(a, masked(7), "same seed, same mask");
        assert_ne!(a, masked(8), "another seed, another mask");
        let kept = a.iter().filter(|v| **v != 0.0).count();
        // 512 draws at 0.75: 384 expected, far outside 300..460 only by a broken mask.
        assert!((300..460).contains(&kept), "{kept} of 512 kept");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6), "kept values are scaled by 1/keep");
    }

    #[test]
    fn outside_training_it_does_nothing() {
        seed_thread(Some(1));
        let x = Tensor::<2>::ones([4, 8], &Device::flex());
        let out = apply(&DropoutConfig::new(0.5).init(), x).into_data().try_to_vec::<f32>().expect("f32");
        seed_thread(None);
        assert!(out.iter().all(|v| *v == 1.0));
    }
}
