//! The weight loader against torchvision: numerical parity on a reduced-width EfficientNet
//! (fixture written by scripts/make_parity_fixture.py), the grayscale stem, head
//! replacement, clear errors, and the key names of the full-size models.

use burn::prelude::*;
use protocol::spec::Arch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use worker::models::efficientnet::EfficientNet;
use worker::models::{Classifier, Ctx, build, pretrained};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn tiny(channels: usize, classes: usize) -> Classifier {
    let device = Default::default();
    Classifier::Efficient(EfficientNet::scaled(&mut Ctx::new(&device), 0.25, 0.34, channels, classes, 0.2))
}

#[test]
fn safetensors_weights_reproduce_torchvision_logits() {
    let diff = pretrained::parity(&fixture(), "efficientnet_tiny.safetensors", &Device::flex()).expect("loads");
    eprintln!("max |cobb - torchvision| = {diff}");
    assert!(diff < 1e-4, "max |cobb - torchvision| = {diff}");
}

#[test]
fn pth_weights_reproduce_torchvision_logits() {
    let diff = pretrained::parity(&fixture(), "efficientnet_tiny.pth", &Device::flex()).expect("loads");
    assert!(diff < 1e-4, "max |cobb - torchvision| = {diff}");
}

#[test]
fn a_grayscale_model_sums_the_rgb_stem() {
    let device = Default::default();
    let weights = fixture().join("efficientnet_tiny.safetensors");
    let mut rgb = tiny(3, 10);
    let mut gray = tiny(1, 10);
    let report = pretrained::load(&mut rgb, &weights).expect("rgb loads");
    assert!(report.adapted.is_empty(), "{report:?}");
    let report = pretrained::load(&mut gray, &weights).expect("gray loads");
    assert_eq!(report.naming, "torchvision");
    assert!(report.adapted.iter().any(|a| a.contains("features.0.0.weight") && a.contains("summed")), "{report:?}");
    // A gray image is an RGB image with three equal channels.
    let g = Tensor::<4>::random([2, 1, 48, 48], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let a = rgb.forward(Tensor::cat(vec![g.clone(), g.clone(), g.clone()], 1)).into_data().try_to_vec::<f32>().expect("f32 logits");
    let b = gray.forward(g).into_data().try_to_vec::<f32>().expect("f32 logits");
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn another_class_count_replaces_the_head_only() {
    let mut model = tiny(1, 4);
    let report = pretrained::load(&mut model, &fixture().join("efficientnet_tiny.pth")).expect("loads");
    assert!(report.adapted.iter().any(|a| a.contains("classifier.1") && a.contains("replaced")), "{report:?}");
    assert_eq!(model.forward(Tensor::zeros([1, 1, 32, 32], &Default::default())).dims(), [1, 4]);
}

#[test]
fn weights_of_another_model_are_refused_with_the_keys_named() {
    let device = Default::default();
    let mut b0 = build(Arch::EfficientnetB0, 1, 10, None, &device).model;
    let err = pretrained::load(&mut b0, &fixture().join("efficientnet_tiny.safetensors")).expect_err("refused").to_string();
    assert!(err.contains("of the wrong shape") && err.contains("features.0.0.weight"), "{err}");
    let mut resnet = build(Arch::Resnet18, 1, 10, None, &device).model;
    let err = pretrained::load(&mut resnet, &fixture().join("efficientnet_tiny.safetensors")).expect_err("refused").to_string();
    assert!(err.contains("conv1.weight") && err.contains("features.0.0.weight"), "{err}");
    let mut simple = build(Arch::SimpleCnn, 1, 10, None, &device).model;
    assert!(
        pretrained::load(&mut simple, &fixture().join("efficientnet_tiny.pth")).expect_err("refused").to_string().contains("simple_cnn")
    );
    let err = pretrained::load(&mut b0, Path::new("/nonexistent/weights.pth")).expect_err("refused").to_string();
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn full_size_models_use_torchvision_key_names_and_shapes() {
    let text = std::fs::read_to_string(fixture().join("keys.json")).expect("keys.json");
    let all: BTreeMap<String, BTreeMap<String, Vec<usize>>> = serde_json::from_str(&text).expect("json");
    for (name, arch) in [
        ("resnet18", Arch::Resnet18),
        ("resnet50", Arch::Resnet50),
        ("efficientnet_b0", Arch::EfficientnetB0),
        ("efficientnet_b6", Arch::EfficientnetB6),
    ] {
        let model = build(arch, 3, 1000, None, &Device::flex()).model;
        let ours: BTreeMap<String, Vec<usize>> = pretrained::torchvision_keys(&model).into_iter().collect();
        let theirs: BTreeMap<String, Vec<usize>> =
            all[name].iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(ours, theirs, "{name}");
    }
}
