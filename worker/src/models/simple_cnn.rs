//! `simple_cnn`: a small, fast baseline. Four conv-BN-ReLU-maxpool blocks (16, 32, 64, 128
//! channels), global average pooling, dropout and a linear head.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::Ctx;
use super::norm::{Act, BatchNorm2d};

#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    bn: BatchNorm2d,
    pool: MaxPool2d,
}

impl ConvBlock {
    fn new(ctx: &mut Ctx, input: usize, output: usize) -> Self {
        Self {
            conv: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(ctx.device),
            bn: ctx.bn(output),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool.forward(self.bn.forward_act(super::conv::forward(&self.conv, x), Act::Relu))
    }
}

#[derive(Module, Debug)]
pub struct SimpleCnn {
    blocks: Vec<ConvBlock>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    head: Linear,
}

impl SimpleCnn {
    pub fn new(ctx: &mut Ctx, channels: usize, classes: usize, dropout: f64) -> Self {
        let widths = [channels, 16, 32, 64, 128];
        let blocks = widths.windows(2).map(|w| ConvBlock::new(ctx, w[0], w[1])).collect();
        Self {
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            head: LinearConfig::new(128, classes).init(ctx.device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.pool.forward(x).flatten::<2>(1, 3);
        self.head.forward(super::dropout::apply(&self.dropout, x))
    }
}
