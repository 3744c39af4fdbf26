//! Classifiers in Burn: EfficientNet B0-B7 (torchvision's layout and compound scaling),
//! ResNet-18/34/50 and `simple_cnn`, for any number of input channels and classes.

pub mod backend;
pub mod conv;
pub mod dropout;
pub mod efficientnet;
pub mod norm;
pub mod pretrained;
pub mod resnet;
pub mod simple_cnn;

use burn::prelude::*;
use protocol::spec::Arch;

/// Builds layers and counts BatchNorm channels on the way, so that trainable parameters
/// (what torchvision reports) can be told from Burn's `num_params`, which also counts
/// BatchNorm running statistics.
pub struct Ctx<'a> {
    pub device: &'a Device,
    pub bn_channels: usize,
    /// BatchNorm epsilon and momentum (torchvision uses 1e-3/0.01 for EfficientNet B5-B7).
    pub bn_eps: f64,
    pub bn_momentum: f64,
}

impl<'a> Ctx<'a> {
    pub fn new(device: &'a Device) -> Self {
        Self { device, bn_channels: 0, bn_eps: 1e-5, bn_momentum: 0.1 }
    }

    pub fn bn(&mut self, channels: usize) -> norm::BatchNorm2d {
        self.bn_channels += channels;
        norm::BatchNorm2d::new(channels, self.bn_eps, self.bn_momentum, self.device)
    }
}

/// Any of cobb's architectures. (Built once per run; the size difference between variants
/// does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    Simple(simple_cnn::SimpleCnn),
    Resnet(resnet::ResNet),
    Efficient(efficientnet::EfficientNet),
}

impl Classifier {
    /// `[batch, channels, h, w]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Simple(m) => m.forward(x),
            Classifier::Resnet(m) => m.forward(x),
            Classifier::Efficient(m) => m.forward(x),
        }
    }
}

/// A built model and its count of trainable parameters.
pub struct Built {
    pub model: Classifier,
    pub trainable: usize,
}

/// Burn's random draws (a new model's initial weights) come from one generator per backend,
/// shared by the whole process, and a parameter is drawn when first read, not when built:
/// [`build_seeded`] seeds, builds and reads every parameter under this lock, so a run's
/// initial weights follow from its seed even while another run builds a model in the same
/// process. (A model built to load a checkpoint draws nothing; dropout has generators of its
/// own: [`dropout`].)
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`build`] with Burn's generator seeded with `seed` first and every parameter drawn, in one
/// turn of the lock: the same seed gives the same initial weights whatever else the process
/// is doing.
pub fn build_seeded(arch: Arch, channels: usize, classes: usize, dropout: Option<f64>, device: &Device, seed: u64) -> Built {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    let built = build(arch, channels, classes, dropout, device);
    built.model.visit(&mut Materialise);
    built
}

/// Reads every float parameter, which draws the lazily initialised ones.
struct Materialise;

impl burn::module::ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds `arch` for `channels` input channels and `classes` outputs. `dropout` overrides
/// the architecture's default head dropout. Parameters are drawn lazily, when first read.
pub fn build(arch: Arch, channels: usize, classes: usize, dropout: Option<f64>, device: &Device) -> Built {
    let mut ctx = Ctx::new(device);
    let model = match arch {
        Arch::SimpleCnn => Classifier::Simple(simple_cnn::SimpleCnn::new(&mut ctx, channels, classes, dropout.unwrap_or(0.2))),
        Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => {
            Classifier::Resnet(resnet::ResNet::new(&mut ctx, arch, channels, classes, dropout.unwrap_or(0.0)))
        }
        _ => Classifier::Efficient(efficientnet::EfficientNet::new(&mut ctx, arch, channels, classes, dropout)),
    };
    let running = 2 * ctx.bn_channels;
    let trainable = model.num_params() - running;
    Built { model, trainable }
}

/// Trainable parameters of `arch` (what torchvision reports), built on the CPU.
pub fn trainable_parameters(arch: Arch, channels: usize, classes: usize) -> usize {
    build(arch, channels, classes, None, &Device::flex()).trainable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainable(arch: Arch) -> usize {
        build(arch, 3, 1000, None, &Device::flex()).trainable
    }

    #[test]
    fn resnet_parameter_counts_match_torchvision() {
        assert_eq!(trainable(Arch::Resnet18), 11_689_512);
        assert_eq!(trainable(Arch::Resnet34), 21_797_672);
        assert_eq!(trainable(Arch::Resnet50), 25_557_032);
    }

    #[test]
    fn efficientnet_parameter_counts_match_torchvision() {
        for (arch, expected) in [
            (Arch::EfficientnetB0, 5_288_548),
            (Arch::EfficientnetB1, 7_794_184),
            (Arch::EfficientnetB2, 9_109_994),
            (Arch::EfficientnetB3, 12_233_232),
            (Arch::EfficientnetB4, 19_341_616),
            (Arch::EfficientnetB5, 30_389_784),
            (Arch::EfficientnetB6, 43_040_704),
            (Arch::EfficientnetB7, 66_347_960),
        ] {
            assert_eq!(trainable(arch), expected, "{arch}");
        }
    }

    #[test]
    fn every_model_maps_a_grayscale_batch_to_class_logits() {
        let device = Device::flex();
        for arch in [Arch::SimpleCnn, Arch::Resnet18, Arch::EfficientnetB0] {
            let built = build(arch, 1, 10, None, &device);
            let x = Tensor::<4>::zeros([2, 1, 64, 64], &device);
            assert_eq!(built.model.forward(x).dims(), [2, 10], "{arch}");
        }
    }
}
