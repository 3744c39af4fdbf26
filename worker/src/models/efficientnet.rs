//! EfficientNet B0-B7 as in torchvision (and the original paper): compound scaling of
//! width, depth and resolution, MBConv blocks with depthwise convolutions,
//! squeeze-and-excitation, SiLU, batch norm and stochastic depth.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::sigmoid;
use protocol::spec::Arch;

use super::Ctx;
use super::backend::{Geometry, depthwise_conv2d, silu};
use super::norm::{Act, BatchNorm2d};

/// (width multiplier, depth multiplier, head dropout) per variant.
pub fn scaling(arch: Arch) -> (f64, f64, f64) {
    match arch {
        Arch::EfficientnetB1 => (1.0, 1.1, 0.2),
        Arch::EfficientnetB2 => (1.1, 1.2, 0.3),
        Arch::EfficientnetB3 => (1.2, 1.4, 0.3),
        Arch::EfficientnetB4 => (1.4, 1.8, 0.4),
        Arch::EfficientnetB5 => (1.6, 2.2, 0.4),
        Arch::EfficientnetB6 => (1.8, 2.6, 0.5),
        Arch::EfficientnetB7 => (2.0, 3.1, 0.5),
        _ => (1.0, 1.0, 0.2),
    }
}

/// B0's stages: (expand ratio, kernel, stride, input channels, output channels, layers).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// Rounds channels to a multiple of 8, never down by more than 10% (torchvision's
/// `_make_divisible`).
pub fn round_filters(channels: usize, width: f64) -> usize {
    let v = channels as f64 * width;
    let mut rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded += 8;
    }
    rounded
}

fn round_repeats(layers: usize, depth: f64) -> usize {
    (layers as f64 * depth).ceil() as usize
}

#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(ctx: &mut Ctx, input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> Self {
        let pad = (kernel - 1) / 2;
        Self {
            conv: Conv2dConfig::new([input, output], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_groups(groups)
                .with_bias(false)
                .init(ctx.device),
            bn: ctx.bn(output),
        }
    }

    /// `act(bn(conv(x)))`.
    fn forward(&self, x: Tensor<4>, act: Act) -> Tensor<4> {
        let conv = &self.conv;
        let y = if conv.groups > 1 && conv.groups == x.dims()[1] {
            let geometry = Geometry { stride: conv.stride[0], padding: (conv.kernel_size[0] - 1) / 2 };
            depthwise_conv2d(x, conv.weight.val(), geometry)
        } else if conv.kernel_size == [1, 1] && conv.stride == [1, 1] && conv.groups == 1 && x.device().is_autodiff() {
            pointwise(x, conv.weight.val())
        } else {
            super::conv::forward(conv, x)
        };
        self.bn.forward_act(y, act)
    }
}

/// A 1x1 convolution without bias as one batched matrix product, `[1, C_out, C_in]` times
/// `[N, C_in, H*W]`, for training: the same arithmetic as Burn's convolution, whose weight
/// gradient on flex goes through swapped, copied views (forward and backward together 5-11x
/// slower on a 96-channel map, `cobb-bench ops`). Without gradients Burn's convolution is the
/// faster one.
pub fn pointwise(x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let c_out = weight.dims()[0];
    weight.reshape([1, c_out, c_in]).matmul(x.reshape([n, c_in, h * w])).reshape([n, c_out, h, w])
}

#[derive(Module, Debug)]
pub struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
    pool: AdaptiveAvgPool2d,
}

impl SqueezeExcite {
    fn new(ctx: &Ctx, channels: usize, squeeze: usize) -> Self {
        Self {
            fc1: Conv2dConfig::new([channels, squeeze], [1, 1]).init(ctx.device),
            fc2: Conv2dConfig::new([squeeze, channels], [1, 1]).init(ctx.device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let scale = sigmoid(self.fc2.forward(silu(self.fc1.forward(self.pool.forward(x.clone())))));
        x * scale
    }
}

#[derive(Module, Debug)]
pub struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se: SqueezeExcite,
    project: ConvBn,
    residual: bool,
    /// Probability of dropping the residual branch during training.
    drop_path: f64,
    /// Stage (0-6) and position in the stage: torchvision's `features.{stage + 1}.{index}`.
    stage: usize,
    index: usize,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &mut Ctx,
        input: usize,
        output: usize,
        expand: usize,
        kernel: usize,
        stride: usize,
        drop_path: f64,
        at: (usize, usize),
    ) -> Self {
        let hidden = round_filters_exact(input * expand);
        Self {
            expand: (expand != 1).then(|| ConvBn::new(ctx, input, hidden, 1, 1, 1)),
            depthwise: ConvBn::new(ctx, hidden, hidden, kernel, stride, hidden),
            se: SqueezeExcite::new(ctx, hidden, (input / 4).max(1)),
            project: ConvBn::new(ctx, hidden, output, 1, 1, 1),
            residual: stride == 1 && input == output,
            drop_path,
            stage: at.0,
            index: at.1,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(y, Act::Silu);
        }
        y = self.depthwise.forward(y, Act::Silu);
        y = self.project.forward(self.se.forward(y), Act::None);
        if !self.residual {
            return y;
        }
        if y.device().is_autodiff() && self.drop_path > 0.0 {
            // Stochastic depth: drop the whole branch per sample, rescale the survivors.
            let keep = 1.0 - self.drop_path;
            let [n, _, _, _] = y.dims();
            let mask = Tensor::<4>::random([n, 1, 1, 1], Distribution::Bernoulli(keep), &y.device());
            y = y * mask / keep;
        }
        y + x
    }
}

/// torchvision expands with `_make_divisible(input * expand_ratio, 8)`; the products of
/// rounded channel counts are already multiples of 8, so this is the identity in practice.
fn round_filters_exact(channels: usize) -> usize {
    round_filters(channels, 1.0)
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    classifier: Linear,
}

impl EfficientNet {
    pub fn new(ctx: &mut Ctx, arch: Arch, channels: usize, classes: usize, dropout: Option<f64>) -> Self {
        let (width, depth, default_dropout) = scaling(arch);
        if matches!(arch, Arch::EfficientnetB5 | Arch::EfficientnetB6 | Arch::EfficientnetB7) {
            // torchvision ports these from TensorFlow with BatchNorm(eps=1e-3, momentum=0.01).
            ctx.bn_eps = 1e-3;
            ctx.bn_momentum = 0.01;
        }
        Self::scaled(ctx, width, depth, channels, classes, dropout.unwrap_or(default_dropout))
    }

    /// B0's layout scaled by any width and depth multipliers (the named variants are
    /// particular values; the parity fixture uses a reduced-width model).
    pub fn scaled(ctx: &mut Ctx, width: f64, depth: f64, channels: usize, classes: usize, dropout: f64) -> Self {
        let stem_out = round_filters(32, width);
        let stem = ConvBn::new(ctx, channels, stem_out, 3, 2, 1);
        let total: usize = STAGES.iter().map(|s| round_repeats(s.5, depth)).sum();
        let mut blocks = Vec::with_capacity(total);
        let mut input = stem_out;
        for (stage, &(expand, kernel, stride, _, out, layers)) in STAGES.iter().enumerate() {
            let output = round_filters(out, width);
            for i in 0..round_repeats(layers, depth) {
                let drop_path = 0.2 * blocks.len() as f64 / total as f64;
                let stride = if i == 0 { stride } else { 1 };
                blocks.push(MbConv::new(ctx, input, output, expand, kernel, stride, drop_path, (stage, i)));
                input = output;
            }
        }
        let head_out = 4 * input;
        let head = ConvBn::new(ctx, input, head_out, 1, 1, 1);
        Self {
            stem,
            blocks,
            head,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            classifier: LinearConfig::new(head_out, classes).init(ctx.device),
        }
    }

    /// Module paths in cobb and in torchvision's and timm's state dicts, one row per
    /// convolution, batch norm or linear layer: (cobb, torchvision, timm).
    pub fn foreign_names(&self) -> Vec<[String; 3]> {
        let mut names =
            vec![["stem.conv", "features.0.0", "conv_stem"].map(String::from), ["stem.bn", "features.0.1", "bn1"].map(String::from)];
        for (b, block) in self.blocks.iter().enumerate() {
            let tv = format!("features.{}.{}.block", block.stage + 1, block.index);
            let timm = format!("blocks.{}.{}", block.stage, block.index);
            let ours = format!("blocks.{b}");
            let mut row = |cobb: &str, tv_part: String, timm_part: &str| {
                names.push([format!("{ours}.{cobb}"), format!("{tv}.{tv_part}"), format!("{timm}.{timm_part}")]);
            };
            // torchvision numbers the sub-blocks; the depthwise one is first without expansion.
            let d = usize::from(block.expand.is_some());
            if block.expand.is_some() {
                row("expand.conv", "0.0".into(), "conv_pw");
                row("expand.bn", "0.1".into(), "bn1");
                row("depthwise.conv", format!("{d}.0"), "conv_dw");
                row("depthwise.bn", format!("{d}.1"), "bn2");
                row("project.conv", format!("{}.0", d + 2), "conv_pwl");
                row("project.bn", format!("{}.1", d + 2), "bn3");
            } else {
                row("depthwise.conv", format!("{d}.0"), "conv_dw");
                row("depthwise.bn", format!("{d}.1"), "bn1");
                row("project.conv", format!("{}.0", d + 2), "conv_pw");
                row("project.bn", format!("{}.1", d + 2), "bn2");
            }
            row("se.fc1", format!("{}.fc1", d + 1), "se.conv_reduce");
            row("se.fc2", format!("{}.fc2", d + 1), "se.conv_expand");
        }
        names.push(["head.conv", "features.8.0", "conv_head"].map(String::from));
        names.push(["head.bn", "features.8.1", "bn2"].map(String::from));
        names.push(["classifier", "classifier.1", "classifier"].map(String::from));
        names
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x, Act::Silu);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.head.forward(x, Act::Silu);
        let x = self.pool.forward(x).flatten::<2>(1, 3);
        self.classifier.forward(super::dropout::apply(&self.dropout, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_torchvision() {
        assert_eq!(round_filters(32, 1.8), 56);
        assert_eq!(round_filters(320, 1.8), 576);
        assert_eq!(round_filters(24, 1.1), 24);
        assert_eq!(round_filters(16, 1.4), 24);
        assert_eq!(round_repeats(3, 2.6), 8);
    }
}
