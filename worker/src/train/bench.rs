//! Training and evaluation throughput on synthetic batches (the workload of
//! ../shared/peers/torch_train_bench.py: batch of random 1-channel images, 10 classes,
//! AdamW lr 1e-3, cross-entropy), for `cobb-bench train`.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use protocol::spec::Arch;
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub arch: String,
    pub size: usize,
    pub batch: usize,
    pub train_images_per_second: f64,
    pub eval_images_per_second: f64,
    pub train_step_ms: f64,
}

type B = Autodiff<Flex>;

/// Times `train_steps` training steps and `eval_steps` evaluation steps after `warmup`
/// untimed training steps.
pub fn measure(arch: Arch, size: usize, batch: usize, warmup: usize, train_steps: usize, eval_steps: usize) -> Throughput {
    let device = Default::default();
    <B as Backend>::seed(&device, 0);
    let mut model = crate::models::build::<B>(arch, 1, 10, None, &device).model;
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let x = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new((0..batch as i64).map(|i| i % 10).collect::<Vec<_>>(), [batch]), &device);
    let mut step = |model: crate::models::Classifier<B>| {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let _ = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-3, model, grads)
    };
    for _ in 0..warmup {
        model = step(model);
    }
    let started = Instant::now();
    for _ in 0..train_steps {
        model = step(model);
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let valid = model.valid();
    let xv = x.inner();
    let _ = valid.forward(xv.clone()).argmax(1).into_data();
    let started = Instant::now();
    for _ in 0..eval_steps {
        let _ = valid.forward(xv.clone()).argmax(1).into_data();
    }
    let eval_seconds = started.elapsed().as_secs_f64();
    Throughput {
        arch: arch.to_string(),
        size,
        batch,
        train_images_per_second: (train_steps * batch) as f64 / train_seconds.max(1e-9),
        eval_images_per_second: (eval_steps * batch) as f64 / eval_seconds.max(1e-9),
        train_step_ms: train_seconds * 1000.0 / train_steps.max(1) as f64,
    }
}
