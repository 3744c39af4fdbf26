//! Training and evaluation throughput on synthetic batches (the workload of
//! the PyTorch peer (docs/benchmarks.md): batch of random 1-channel images, 10 classes,
//! AdamW lr 1e-3, cross-entropy), for `cobb-bench train`.

use crate::device::{DeviceChoice, DeviceError};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
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
    /// Timed training steps actually run (fewer than asked when `max_seconds` ran out).
    pub train_steps: usize,
    /// Wall time of the untimed warm-up steps (on CUDA: autotuning and compiling kernels for
    /// each new shape), and of the first of them alone.
    pub warmup_seconds: f64,
    pub first_step_seconds: f64,
    /// Wall time of the first evaluation batch (the inference graph's own kernels).
    pub eval_warmup_seconds: f64,
    pub device: String,
}

/// What to time: `train_steps` training steps (stopping early once `max_seconds` have
/// passed) and `eval_steps` evaluation steps, after `warmup` untimed training steps.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub arch: Arch,
    pub size: usize,
    pub batch: usize,
    pub warmup: usize,
    pub train_steps: usize,
    pub eval_steps: usize,
    pub max_seconds: f64,
}

/// Runs `work` on the chosen device (Burn's flex on the CPU, or CUDA with the `cuda` feature).
pub fn measure(choice: DeviceChoice, work: Workload) -> Result<Throughput, DeviceError> {
    let device = crate::device::burn_device(choice)?;
    let name = match choice {
        DeviceChoice::Cpu => "cpu".to_owned(),
        DeviceChoice::Cuda(index) => format!("cuda:{index}"),
    };
    Ok(crate::device::on_compute_pool(|| measure_on(&device, work, &name)))
}

/// The torchvision parity check ([`crate::models::pretrained::parity`]) on the chosen device.
pub fn parity(choice: DeviceChoice, fixture: &std::path::Path) -> Result<f32, String> {
    let device = crate::device::burn_device(choice).map_err(|e| e.to_string())?;
    crate::models::pretrained::parity(fixture, "efficientnet_tiny.safetensors", &device).map_err(|e| e.to_string())
}

fn measure_on(device: &Device, work: Workload, name: &str) -> Throughput {
    let Workload { arch, size, batch, warmup, train_steps, eval_steps, max_seconds } = work;
    let device = device.clone().autodiff();
    device.seed(0);
    let mut model = crate::models::build(arch, 1, 10, None, &device).model;
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let x = Tensor::<4>::random([batch, 1, size, size], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new((0..batch as i64).map(|i| i % 10).collect::<Vec<_>>(), [batch]), &device);
    let mut step = |model: crate::models::Classifier| {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let _ = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-3, model, grads)
    };
    let warm = Instant::now();
    let mut first_step_seconds = 0.0;
    for i in 0..warmup {
        model = step(model);
        if i == 0 {
            first_step_seconds = warm.elapsed().as_secs_f64();
        }
    }
    let warmup_seconds = warm.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut done = 0;
    while done < train_steps && (done == 0 || started.elapsed().as_secs_f64() < max_seconds) {
        model = step(model);
        done += 1;
    }
    let train_steps = done;
    let train_seconds = started.elapsed().as_secs_f64();
    let valid = model.valid();
    let xv = x.inner();
    let warm = Instant::now();
    let _ = valid.forward(xv.clone()).argmax(1).into_data();
    let eval_warmup_seconds = warm.elapsed().as_secs_f64();
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
        train_steps,
        warmup_seconds,
        first_step_seconds,
        eval_warmup_seconds,
        device: name.to_owned(),
    }
}

/// Forward + backward time of one layer operation in Burn's form and in cobb's, on flex.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTiming {
    pub op: String,
    pub shape: [usize; 4],
    pub burn_ms: f64,
    pub cobb_ms: f64,
}

/// Times the operations cobb replaced (docs/benchmarks.md): each one's forward pass and the
/// backward pass of `sum(y * w)` for a fixed random `w`, median of `repeats`, less the same
/// for the identity (the loss and the gradient bookkeeping); then the forward passes that
/// evaluation runs its own way ([`forward_ops`]).
pub fn ops(repeats: usize) -> Vec<OpTiming> {
    use crate::models::norm::BatchNorm2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    let device = Device::flex().autodiff();
    device.seed(0);
    let time = |shape: [usize; 4], f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let w = Tensor::<4>::random(f(x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
        median_ms(repeats, || {
            let grads = (f(x.clone()) * w.clone()).sum().backward();
            let _ = x.grad(&grads).map(|g| g.into_data());
        })
    };
    let mut out = Vec::new();
    let mut row = |op: &str, shape: [usize; 4], burn: &dyn Fn(Tensor<4>) -> Tensor<4>, cobb: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let base = time(shape, &|x| x);
        let (b, c) = (time(shape, burn), time(shape, cobb));
        out.push(OpTiming { op: op.to_owned(), shape, burn_ms: (b - base).max(0.0), cobb_ms: (c - base).max(0.0) });
    };
    let map = [16, 16, 128, 128];
    let theirs = BatchNormConfig::new(16).init(&device);
    let ours = BatchNorm2d::new(16, 1e-5, 0.1, &device);
    row("batch norm (training)", map, &|x| theirs.forward(x), &|x| ours.forward(x));
    row("silu", map, &burn::tensor::activation::silu, &crate::models::backend::silu);
    let expanded = [16, 96, 32, 32];
    for (kernel, stride) in [(3, 1), (5, 2)] {
        let (layer, geometry) = depthwise_layer(kernel, stride, &device);
        let weight = layer.weight.val();
        let name = format!("depthwise conv {kernel}x{kernel}, stride {stride}");
        row(&name, expanded, &|x| layer.forward(x), &|x| crate::models::backend::depthwise_conv2d(x, weight.clone(), geometry));
    }
    let project = Conv2dConfig::new([96, 24], [1, 1]).with_padding(PaddingConfig2d::Explicit(0, 0, 0, 0)).with_bias(false).init(&device);
    let weight = project.weight.val();
    row("1x1 conv 96 -> 24", expanded, &|x| project.forward(x), &|x| crate::models::efficientnet::pointwise(x, weight.clone()));
    let dense = Conv2dConfig::new([64, 64], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(false).init(&device);
    row("3x3 conv 64 -> 64", [16, 64, 32, 32], &|x| dense.forward(x), &|x| crate::models::conv::forward(&dense, x));
    out.extend(forward_ops(repeats));
    out
}

/// The median time of `repeats` calls of `once` in milliseconds, after one untimed call.
fn median_ms(repeats: usize, mut once: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats.max(1) + 1)
        .map(|_| {
            let started = Instant::now();
            once();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A 96-channel depthwise convolution of `kernel` x `kernel` with "same" padding, as Burn's
/// layer and as the geometry of cobb's kernel.
fn depthwise_layer(kernel: usize, stride: usize, device: &Device) -> (burn::nn::conv::Conv2d, crate::models::backend::Geometry) {
    let pad = (kernel - 1) / 2;
    let layer = burn::nn::conv::Conv2dConfig::new([96, 96], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(burn::nn::PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(96)
        .with_bias(false)
        .init(device);
    (layer, crate::models::backend::Geometry { stride, padding: pad })
}

/// The forward passes cobb runs its own way without autodiff (evaluation, classification):
/// median of `repeats` forward passes on flex, Burn's form against cobb's.
fn forward_ops(repeats: usize) -> Vec<OpTiming> {
    use crate::models::norm::{Act, BatchNorm2d};
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let device = Device::flex();
    device.seed(0);
    let time = |shape: [usize; 4], f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        median_ms(repeats, || {
            let _ = f(x.clone()).into_data();
        })
    };
    let mut out = Vec::new();
    let mut row = |op: &str, shape: [usize; 4], burn: &dyn Fn(Tensor<4>) -> Tensor<4>, cobb: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        out.push(OpTiming { op: op.to_owned(), shape, burn_ms: time(shape, burn), cobb_ms: time(shape, cobb) });
    };
    let map = [16, 96, 56, 56];
    let bn = BatchNorm2d::new(96, 1e-5, 0.1, &device);
    row("batch norm + SiLU (evaluation)", map, &|x| burn::tensor::activation::silu(bn.forward(x)), &|x| bn.forward_act(x, Act::Silu));
    for (kernel, stride) in [(3, 1), (5, 2)] {
        let (layer, geometry) = depthwise_layer(kernel, stride, &device);
        let weight = layer.weight.val();
        let name = format!("depthwise conv {kernel}x{kernel}, stride {stride} (evaluation)");
        row(&name, map, &|x| layer.forward(x), &|x| crate::models::backend::depthwise_conv2d(x, weight.clone(), geometry));
    }
    let dense = Conv2dConfig::new([64, 64], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(false).init(&device);
    row("3x3 conv 64 -> 64 (evaluation)", [16, 64, 56, 56], &|x| dense.forward(x), &|x| crate::models::conv::forward(&dense, x));
    let stem = Conv2dConfig::new([1, 64], [7, 7])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
        .with_bias(false)
        .init(&device);
    row("7x7 conv 1 -> 64, stride 2 (evaluation)", [16, 1, 224, 224], &|x| stem.forward(x), &|x| crate::models::conv::forward(&stem, x));
    out
}
