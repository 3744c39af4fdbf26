//! The frozen split: stratified by class, grouped by patient, seeded, and independent of
//! the order items come in (or the OS or thread count that listed them).
//!
//! Groups (a patient's images, or a single image without a patient id) are placed one by
//! one, largest first, ties broken by a seeded hash of the group key. Each goes to the
//! split whose per-class targets it helps most (relative deficit, weighted by the group's
//! images of each class), so no patient ever spans two splits.

use protocol::Split;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
pub struct SplitInput<'a> {
    /// Stable identity of the item (its sha256).
    pub key: &'a str,
    pub label: &'a str,
    /// The (hashed) patient id; None puts the item in a group of its own.
    pub group: Option<&'a str>,
}

fn order_key(seed: u64, group: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(group.as_bytes());
    h.finalize().into()
}

/// Assigns every item a split. `ratios` are train/val/test percentages.
pub fn assign(items: &[SplitInput<'_>], ratios: [u32; 3], seed: u64) -> Vec<Split> {
    const SPLITS: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    // group key -> (label -> count), plus member indices.
    let mut groups: BTreeMap<String, (BTreeMap<&str, u64>, Vec<usize>)> = BTreeMap::new();
    let mut class_totals: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let key = match item.group {
            Some(g) => format!("p:{g}"),
            None => format!("f:{}", item.key),
        };
        let entry = groups.entry(key).or_default();
        *entry.0.entry(item.label).or_default() += 1;
        entry.1.push(i);
        *class_totals.entry(item.label).or_default() += 1;
    }
    let total_ratio: f64 = ratios.iter().map(|r| f64::from(*r)).sum::<f64>().max(1.0);
    let target =
        |s: usize, class: &str| -> f64 { class_totals.get(class).copied().unwrap_or(0) as f64 * f64::from(ratios[s]) / total_ratio };

    let mut order: Vec<(&String, u64, [u8; 32])> =
        groups.iter().map(|(key, (counts, _))| (key, counts.values().sum::<u64>(), order_key(seed, key))).collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));

    let mut assigned: [BTreeMap<&str, f64>; 3] = Default::default();
    let mut out = vec![Split::Train; items.len()];
    for (key, _, _) in order {
        let (counts, members) = &groups[key];
        let mut best = (f64::NEG_INFINITY, 0usize);
        for s in 0..3 {
            if ratios[s] == 0 {
                continue;
            }
            let score: f64 = counts
                .iter()
                .map(|(class, n)| {
                    let t = target(s, class);
                    let have = assigned[s].get(class).copied().unwrap_or(0.0);
                    *n as f64 * (t - have) / t.max(1e-9)
                })
                .sum();
            if score > best.0 {
                best = (score, s);
            }
        }
        let s = best.1;
        for (class, n) in counts {
            *assigned[s].entry(class).or_default() += *n as f64;
        }
        for &i in members {
            out[i] = SPLITS[s];
        }
    }
    out
}

/// Freezes the split of scanned items: the manifest entries a dataset version stores.
/// With `by_patient`, a patient's images share one split.
pub fn freeze(items: Vec<super::manifest::ScannedItem>, ratios: [u32; 3], seed: u64, by_patient: bool) -> Vec<protocol::api::DatasetItem> {
    let inputs: Vec<SplitInput<'_>> = items
        .iter()
        .map(|i| SplitInput { key: &i.sha256, label: &i.label, group: if by_patient { i.patient.as_deref() } else { None } })
        .collect();
    let splits = assign(&inputs, ratios, seed);
    items
        .into_iter()
        .zip(splits)
        .map(|(i, split)| protocol::api::DatasetItem {
            path: i.path,
            sha256: i.sha256,
            bytes: i.bytes,
            label: i.label,
            patient: i.patient,
            split,
            view: i.view,
            acquired_at: i.acquired_at,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    struct Item {
        key: String,
        label: &'static str,
        patient: Option<String>,
    }

    fn dataset() -> Vec<Item> {
        // 3 classes x 40 patients x 1-3 images; some images without a patient.
        let mut items = Vec::new();
        for (c, label) in ["a", "b", "c"].into_iter().enumerate() {
            for p in 0..40 {
                for k in 0..(1 + (p + c) % 3) {
                    items.push(Item { key: format!("{label}-{p}-{k}"), label, patient: Some(format!("{label}{p}")) });
                }
            }
            for k in 0..10 {
                items.push(Item { key: format!("{label}-solo-{k}"), label, patient: None });
            }
        }
        items
    }

    fn run(items: &[Item], seed: u64) -> HashMap<String, Split> {
        let inputs: Vec<SplitInput<'_>> =
            items.iter().map(|i| SplitInput { key: &i.key, label: i.label, group: i.patient.as_deref() }).collect();
        let splits = assign(&inputs, [70, 15, 15], seed);
        items.iter().zip(splits).map(|(i, s)| (i.key.clone(), s)).collect()
    }

    #[test]
    fn no_patient_is_in_two_splits() {
        let items = dataset();
        let splits = run(&items, 3);
        let mut by_patient: HashMap<&str, BTreeSet<Split>> = HashMap::new();
        for item in &items {
            if let Some(p) = &item.patient {
                by_patient.entry(p).or_default().insert(splits[&item.key]);
            }
        }
        assert!(by_patient.values().all(|s| s.len() == 1));
    }

    #[test]
    fn every_class_is_split_close_to_the_ratios() {
        let items = dataset();
        let splits = run(&items, 3);
        for label in ["a", "b", "c"] {
            let of: Vec<Split> = items.iter().filter(|i| i.label == label).map(|i| splits[&i.key]).collect();
            let share = |s: Split| of.iter().filter(|x| **x == s).count() as f64 / of.len() as f64;
            assert!((share(Split::Train) - 0.70).abs() < 0.05, "{label} train {}", share(Split::Train));
            assert!((share(Split::Val) - 0.15).abs() < 0.05, "{label} val {}", share(Split::Val));
            assert!((share(Split::Test) - 0.15).abs() < 0.05, "{label} test {}", share(Split::Test));
        }
    }

    #[test]
    fn input_order_does_not_change_the_split() {
        let items = dataset();
        let forward = run(&items, 11);
        let mut reversed = dataset();
        reversed.reverse();
        reversed.rotate_left(17);
        assert_eq!(forward, run(&reversed, 11));
    }

    #[test]
    fn the_seed_changes_the_split() {
        let items = dataset();
        assert_ne!(run(&items, 1), run(&items, 2));
    }
}
