//! ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks) in torchvision's layout.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use protocol::spec::Arch;

use super::norm::{Act, BatchNorm2d};
use super::{Ctx, conv};

fn conv(ctx: &Ctx, input: usize, output: usize, kernel: usize, stride: usize) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(ctx.device)
}

#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

/// A basic block (two 3x3 convolutions) or a bottleneck (1x1, 3x3, 1x1 with 4x expansion).
#[derive(Module, Debug)]
pub struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<Downsample>,
    /// torchvision's `layer{layer + 1}.{index}`.
    layer: usize,
    index: usize,
}

impl Block {
    fn new(ctx: &mut Ctx, input: usize, planes: usize, stride: usize, bottleneck: bool, at: (usize, usize)) -> Self {
        let (convs, bns, output) = if bottleneck {
            let out = planes * 4;
            (
                vec![conv(ctx, input, planes, 1, 1), conv(ctx, planes, planes, 3, stride), conv(ctx, planes, out, 1, 1)],
                vec![ctx.bn(planes), ctx.bn(planes), ctx.bn(out)],
                out,
            )
        } else {
            (vec![conv(ctx, input, planes, 3, stride), conv(ctx, planes, planes, 3, 1)], vec![ctx.bn(planes), ctx.bn(planes)], planes)
        };
        let downsample =
            (stride != 1 || input != output).then(|| Downsample { conv: conv(ctx, input, output, 1, stride), bn: ctx.bn(output) });
        Self { convs, bns, downsample, layer: at.0, index: at.1 }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward_act(conv::forward(&d.conv, x.clone()), Act::None),
            None => x.clone(),
        };
        let last = self.convs.len() - 1;
        let mut y = x;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            y = bn.forward_act(conv::forward(conv, y), if i == last { Act::None } else { Act::Relu });
        }
        relu(y + identity)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm2d,
    maxpool: MaxPool2d,
    blocks: Vec<Block>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc: Linear,
}

impl ResNet {
    pub fn new(ctx: &mut Ctx, arch: Arch, channels: usize, classes: usize, dropout: f64) -> Self {
        let (layers, bottleneck) = match arch {
            Arch::Resnet18 => ([2, 2, 2, 2], false),
            Arch::Resnet34 => ([3, 4, 6, 3], false),
            _ => ([3, 4, 6, 3], true),
        };
        let stem = Conv2dConfig::new([channels, 64], [7, 7])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
            .with_bias(false)
            .init(ctx.device);
        let stem_bn = ctx.bn(64);
        let mut blocks = Vec::new();
        let mut input = 64;
        for (stage, &count) in layers.iter().enumerate() {
            let planes = 64 << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(Block::new(ctx, input, planes, stride, bottleneck, (stage, i)));
                input = if bottleneck { planes * 4 } else { planes };
            }
        }
        Self {
            stem,
            stem_bn,
            maxpool: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            fc: LinearConfig::new(input, classes).init(ctx.device),
        }
    }

    /// Module paths in cobb and in torchvision's state dict (timm's ResNets use the same
    /// names): (cobb, torchvision, timm).
    pub fn foreign_names(&self) -> Vec<[String; 3]> {
        let same = |ours: String, theirs: String| [ours, theirs.clone(), theirs];
        let mut names = vec![same("stem".into(), "conv1".into()), same("stem_bn".into(), "bn1".into())];
        for (b, block) in self.blocks.iter().enumerate() {
            let tv = format!("layer{}.{}", block.layer + 1, block.index);
            for k in 0..block.convs.len() {
                names.push(same(format!("blocks.{b}.convs.{k}"), format!("{tv}.conv{}", k + 1)));
                names.push(same(format!("blocks.{b}.bns.{k}"), format!("{tv}.bn{}", k + 1)));
            }
            if block.downsample.is_some() {
                names.push(same(format!("blocks.{b}.downsample.conv"), format!("{tv}.downsample.0")));
                names.push(same(format!("blocks.{b}.downsample.bn"), format!("{tv}.downsample.1")));
            }
        }
        names.push(same("fc".into(), "fc".into()));
        names
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.maxpool.forward(self.stem_bn.forward_act(conv::forward(&self.stem, x), Act::Relu));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.pool.forward(x).flatten::<2>(1, 3);
        self.fc.forward(super::dropout::apply(&self.dropout, x))
    }
}
