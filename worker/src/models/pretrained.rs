//! Loading ImageNet (or any torchvision/timm-named) weights into cobb's models through
//! burn-store: `.safetensors` or `.pth`, key names of torchvision or timm, a 3-channel stem
//! summed down to cobb's 1 grayscale channel, and the classifier head replaced when the
//! number of classes differs. Anything else that does not line up is an error listing the
//! keys, never a silently half-loaded model.

use super::Classifier;
use burn::prelude::*;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{ModuleSnapshot, ModuleStore, PytorchStore, SafetensorsStore, bridge};
use std::collections::BTreeMap;
use std::path::Path;

/// What a load did, for the run's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub loaded: usize,
    /// `torchvision` or `timm`.
    pub naming: &'static str,
    /// Adaptations made, in words (the stem's channels summed, the head replaced).
    pub adapted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error("model.pretrained: cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "model.pretrained: {0} has no pretrained weights in torchvision or timm; use an efficientnet or resnet architecture, or remove model.pretrained"
    )]
    NoWeights(String),
    #[error(
        "model.pretrained: {path} does not use torchvision's or timm's key names (looked for `{expected}`); its first keys are: {first}"
    )]
    Naming { path: String, expected: String, first: String },
    #[error("model.pretrained: {path} does not fit this model:{details}\nuse weights of the same architecture (torchvision or timm names)")]
    Mismatch { path: String, details: String },
}

/// Loads the weights at `path` into `model` (built for 1 or 3 input channels and any number
/// of classes).
pub fn load(model: &mut Classifier, path: &Path) -> Result<LoadReport, PretrainedError> {
    let names = match model {
        Classifier::Efficient(m) => m.foreign_names(),
        Classifier::Resnet(m) => m.foreign_names(),
        Classifier::Simple(_) => return Err(PretrainedError::NoWeights("simple_cnn".into())),
    };
    let shown = path.display().to_string();
    let source = read_tensors(path)?;
    let (naming, column) = if source.contains_key(&format!("{}.weight", names[0][1])) {
        ("torchvision", 1)
    } else if source.contains_key(&format!("{}.weight", names[0][2])) {
        ("timm", 2)
    } else {
        let first: Vec<&str> = source.keys().take(6).map(String::as_str).collect();
        return Err(PretrainedError::Naming { path: shown, expected: format!("{}.weight", names[0][1]), first: first.join(", ") });
    };
    let head = names.last().map(|row| row[0].clone()).unwrap_or_default();
    let stem = names[0][0].clone();
    let prefixes: BTreeMap<&str, &str> = names.iter().map(|row| (row[0].as_str(), row[column].as_str())).collect();

    let mut report = LoadReport { naming, ..LoadReport::default() };
    let mut used = std::collections::HashSet::new();
    let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
    let mut snapshots = Vec::new();
    let mut head_replaced = false;
    for target in model.collect(None, None, true) {
        let Some((module, leaf)) = target.name.rsplit_once('.') else { continue };
        let Some(theirs) = prefixes.get(module) else {
            missing.push(format!("{} (no counterpart known)", target.name));
            continue;
        };
        let key = format!("{theirs}.{}", foreign_leaf(leaf));
        let Some(data) = source.get(&key) else {
            missing.push(key);
            continue;
        };
        used.insert(key.clone());
        let want: Vec<usize> = target.shape.to_vec();
        // The head is the only linear layer of cobb's models.
        let adapted = adapt(data, &want, module == head && leaf == "weight", module == stem && leaf == "weight");
        match adapted {
            Some((values, summed)) => {
                if summed {
                    report.adapted.push(format!("`{key}`: 3 input channels summed into 1"));
                }
                let tensor = TensorData::new(values, want.clone());
                snapshots.push(bridge::from_data(tensor, target.name.clone(), target.param_id));
            }
            None if module == head => head_replaced = true,
            None => mismatched.push(format!("`{key}` is {:?}, the model wants {want:?}", data.shape)),
        }
    }
    if head_replaced {
        report
            .adapted
            .push(format!("classifier head `{}` replaced (different number of classes) and trained from scratch", prefixes[head.as_str()]));
        // A head is loaded whole or not at all.
        snapshots.retain(|s: &PackTensor| s.name.rsplit_once('.').is_none_or(|(module, _)| module != head));
    }
    let unused: Vec<&String> = source.keys().filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked")).collect();
    if !missing.is_empty() || !mismatched.is_empty() || !unused.is_empty() {
        let mut details = String::new();
        for (title, list) in [
            ("missing from the file", missing.iter().collect::<Vec<_>>()),
            ("of the wrong shape", mismatched.iter().collect()),
            ("in the file but not in the model", unused),
        ] {
            if !list.is_empty() {
                let shown: Vec<&str> = list.iter().take(12).map(|s| s.as_str()).collect();
                let more = if list.len() > 12 { format!(" (and {} more)", list.len() - 12) } else { String::new() };
                details.push_str(&format!("\n  {} keys {title}: {}{more}", list.len(), shown.join(", ")));
            }
        }
        return Err(PretrainedError::Mismatch { path: shown, details });
    }
    report.loaded = snapshots.len();
    let result = model.apply(snapshots, None, None, true);
    if !result.errors.is_empty() {
        return Err(PretrainedError::Mismatch { path: shown, details: format!("\n  {:?}", result.errors) });
    }
    Ok(report)
}

/// The state-dict keys (torchvision's names) and PyTorch shapes that `model` loads, in the
/// order of its parameters.
pub fn torchvision_keys(model: &Classifier) -> Vec<(String, Vec<usize>)> {
    let names = match model {
        Classifier::Efficient(m) => m.foreign_names(),
        Classifier::Resnet(m) => m.foreign_names(),
        Classifier::Simple(_) => return Vec::new(),
    };
    let prefixes: BTreeMap<&str, &str> = names.iter().map(|row| (row[0].as_str(), row[1].as_str())).collect();
    let mut keys = Vec::new();
    let head = names.last().map(|row| row[0].clone()).unwrap_or_default();
    for target in model.collect(None, None, true) {
        let Some((module, leaf)) = target.name.rsplit_once('.') else { continue };
        if let Some(theirs) = prefixes.get(module) {
            let mut shape = target.shape.to_vec();
            if module == head && leaf == "weight" {
                shape.reverse();
            }
            keys.push((format!("{theirs}.{}", foreign_leaf(leaf)), shape));
        }
    }
    keys
}

/// The numerical parity check against torchvision: loads `fixture/efficientnet_tiny.*`
/// (written by scripts/make_parity_fixture.py) into a reduced-width EfficientNet on
/// `device`, runs `fixture/expected.safetensors`'s input through it and returns the largest
/// absolute difference from torchvision's logits.
pub fn parity(fixture: &Path, weights: &str, device: &Device) -> Result<f32, PretrainedError> {
    let expected = read_tensors(&fixture.join("expected.safetensors"))?;
    let (Some(input), Some(logits)) = (expected.get("input"), expected.get("logits")) else {
        return Err(PretrainedError::Read {
            path: fixture.display().to_string(),
            message: "expected.safetensors lacks input/logits".into(),
        });
    };
    let mut ctx = super::Ctx::new(device);
    let mut model = Classifier::Efficient(super::efficientnet::EfficientNet::scaled(&mut ctx, 0.25, 0.34, 3, 10, 0.2));
    load(&mut model, &fixture.join(weights))?;
    let shape: [usize; 4] =
        input.shape.clone().try_into().map_err(|_| PretrainedError::Read { path: "input".into(), message: "not 4-d".into() })?;
    let x = Tensor::<4>::from_data(TensorData::new(input.values.clone(), shape), device);
    let got = model.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
    if got.len() != logits.values.len() {
        return Err(PretrainedError::Mismatch {
            path: weights.into(),
            details: format!("\n  {} logits, torchvision gave {}", got.len(), logits.values.len()),
        });
    }
    Ok(got.iter().zip(&logits.values).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max))
}

/// A tensor of the file, as f32.
struct Source {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Source>, PretrainedError> {
    let error = |message: String| PretrainedError::Read { path: path.display().to_string(), message };
    if !path.is_file() {
        return Err(error("no such file (the path is read on the worker's machine, relative to its working directory)".into()));
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let snapshots: BTreeMap<String, PackTensor> = if is_safetensors {
        SafetensorsStore::from_file(path).map_indices_contiguous(false).get_all_tensors().map_err(|e| error(e.to_string()))?.clone()
    } else {
        PytorchStore::from_file(path).map_indices_contiguous(false).get_all_tensors().map_err(|e| error(e.to_string()))?.clone()
    };
    let mut tensors = BTreeMap::new();
    for (key, snapshot) in snapshots {
        let data = bridge::to_data(&snapshot).map_err(|e| error(format!("{key}: {e:?}")))?;
        let shape = data.shape().to_vec();
        let values = if data.dtype().is_float() {
            data.convert::<f32>().try_into_vec::<f32>().map_err(|e| error(format!("{key}: {e:?}")))?
        } else {
            Vec::new() // integer buffers (num_batches_tracked) are not weights
        };
        // Checkpoints saved from DataParallel or Lightning prefix every key.
        let key = ["module.", "model.", "state_dict."].iter().fold(key, |k, p| k.strip_prefix(p).map(str::to_owned).unwrap_or(k));
        tensors.insert(key, Source { shape, values });
    }
    Ok(tensors)
}

/// torchvision's name for a parameter of cobb's (BatchNorm's gamma/beta are weight/bias).
fn foreign_leaf(leaf: &str) -> &str {
    match leaf {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// The file's tensor in the model's shape: a PyTorch linear weight `[out, in]` transposed to
/// Burn's `[in, out]`, a 3-channel stem `[o, 3, k, k]` summed to `[o, 1, k, k]`. `None` when
/// the shapes cannot be made to agree. The flag says whether channels were summed.
fn adapt(source: &Source, want: &[usize], linear_weight: bool, stem: bool) -> Option<(Vec<f32>, bool)> {
    let have = &source.shape;
    if linear_weight && have.len() == 2 && want.len() == 2 && have[0] == want[1] && have[1] == want[0] {
        let (rows, cols) = (have[0], have[1]);
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = source.values[r * cols + c];
            }
        }
        return Some((out, false));
    }
    if have.as_slice() == want {
        return Some((source.values.clone(), false));
    }
    if stem && have.len() == 4 && want.len() == 4 && have[1] == 3 && want[1] == 1 && have[0] == want[0] && have[2..] == want[2..] {
        let (outputs, plane) = (have[0], have[2] * have[3]);
        let mut out = vec![0.0; outputs * plane];
        for o in 0..outputs {
            for c in 0..3 {
                let from = &source.values[(o * 3 + c) * plane..(o * 3 + c + 1) * plane];
                for (acc, v) in out[o * plane..(o + 1) * plane].iter_mut().zip(from) {
                    *acc += v;
                }
            }
        }
        return Some((out, true));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weights_are_transposed_and_stems_summed() {
        let linear = Source { shape: vec![2, 3], values: vec![1., 2., 3., 4., 5., 6.] };
        assert_eq!(adapt(&linear, &[3, 2], true, false), Some((vec![1., 4., 2., 5., 3., 6.], false)));
        let stem = Source { shape: vec![1, 3, 1, 2], values: vec![1., 2., 10., 20., 100., 200.] };
        assert_eq!(adapt(&stem, &[1, 1, 1, 2], false, true), Some((vec![111., 222.], true)));
        assert_eq!(adapt(&stem, &[1, 1, 1, 2], false, false), None, "only the stem is summed");
    }
}
