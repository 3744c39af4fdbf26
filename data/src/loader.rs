//! Batches for training and evaluation: decode (through the cache), augment, and stack,
//! on several threads with a bounded number of batches in flight, yet in a fixed order:
//! the same seed and epoch give the same batches whatever the number of threads.
//! Images that cannot be decoded are left out of their batch and reported; a file that
//! changed since registration ends the epoch with an error.

use protocol::rng::SplitMix64;
use protocol::spec::AugmentSpec;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::cache::{ImageCache, LoadError};
use super::transforms;

#[derive(Debug, Clone)]
pub struct LoaderItem {
    /// The file on this machine.
    pub path: PathBuf,
    /// The item as registered (its path relative to the dataset root): every message about
    /// the item names this, never where the file is on this machine.
    pub name: String,
    pub sha256: String,
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle every epoch (training) or keep the given order (evaluation).
    pub shuffle: bool,
    /// None for evaluation.
    pub augment: Option<AugmentSpec>,
    pub threads: usize,
    /// Batches decoded ahead of the consumer, per thread.
    pub prefetch: usize,
}

#[derive(Debug, Default)]
pub struct Batch {
    /// `len * size * size` values, image after image.
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// The items' names (relative paths), in the order of `labels`.
    pub names: Vec<String>,
    /// Images left out of this batch and why.
    /// (item name, why) of the images that could not be read.
    pub skipped: Vec<(String, String)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The item order of an epoch: a seeded Fisher-Yates shuffle, or the identity.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    order
}

fn make_batch(items: &[LoaderItem], indices: &[usize], cache: &ImageCache, config: &LoaderConfig, epoch: u64) -> Result<Batch, LoadError> {
    let size = cache.size();
    let mut batch = Batch { images: Vec::with_capacity(indices.len() * size * size), ..Batch::default() };
    for &i in indices {
        let item = &items[i];
        match cache.load(&item.path, &item.name, &item.sha256) {
            Ok(img) => {
                let img = match &config.augment {
                    Some(spec) => {
                        let mut rng = SplitMix64::new(config.seed).fork(epoch.wrapping_mul(1_000_003).wrapping_add(i as u64));
                        transforms::augment(&img, size, spec, &mut rng)
                    }
                    None => img,
                };
                batch.images.extend_from_slice(&img);
                batch.labels.push(item.label);
                batch.names.push(item.name.clone());
            }
            Err(e) if !e.is_fatal() => batch.skipped.push((item.name.clone(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

pub struct Batches {
    receivers: Vec<Receiver<Result<Batch, LoadError>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    count: usize,
}

impl Batches {
    /// Batches of one epoch.
    pub fn new(items: Arc<Vec<LoaderItem>>, cache: Arc<ImageCache>, config: LoaderConfig, epoch: u64) -> Self {
        let order = epoch_order(items.len(), config.seed, epoch, config.shuffle);
        let chunks: Vec<Vec<usize>> = order.chunks(config.batch_size.max(1)).map(<[usize]>::to_vec).collect();
        let count = chunks.len();
        let threads = config.threads.clamp(1, count.max(1));
        let chunks = Arc::new(chunks);
        let config = Arc::new(config);
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, rx): (SyncSender<Result<Batch, LoadError>>, _) = sync_channel(config.prefetch.max(1));
            let (items, cache, config, chunks) = (items.clone(), cache.clone(), config.clone(), chunks.clone());
            handles.push(std::thread::spawn(move || {
                for b in (t..chunks.len()).step_by(threads) {
                    let result = make_batch(&items, &chunks[b], &cache, &config, epoch);
                    let fatal = result.is_err();
                    if tx.send(result).is_err() || fatal {
                        break;
                    }
                }
            }));
            receivers.push(rx);
        }
        Self { receivers, handles, next: 0, count }
    }

    /// Number of batches in the epoch.
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Iterator for Batches {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        match rx.recv() {
            Ok(Err(e)) => {
                self.next = self.count;
                Some(Err(e))
            }
            Ok(batch) => Some(batch),
            Err(_) => None,
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn dataset(dir: &std::path::Path, n: usize) -> Vec<LoaderItem> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                image::GrayImage::from_fn(40, 30, |x, y| image::Luma([((x * 5 + y * 3 + i as u32 * 17) % 256) as u8]))
                    .save(&path)
                    .expect("png");
                let sha256 = hex::encode(Sha256::digest(std::fs::read(&path).expect("read")));
                LoaderItem { name: format!("{i}.png"), path, sha256, label: i % 3 }
            })
            .collect()
    }

    fn config(threads: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            seed: 3,
            shuffle: true,
            augment: Some(AugmentSpec { rotate_deg: 5.0, noise: 0.01, ..AugmentSpec::default() }),
            threads,
            prefetch: 2,
        }
    }

    fn collect(items: &Arc<Vec<LoaderItem>>, cache: &Arc<ImageCache>, threads: usize, epoch: u64) -> Vec<(Vec<f32>, Vec<usize>)> {
        Batches::new(items.clone(), cache.clone(), config(threads), epoch)
            .map(|b| b.map(|b| (b.images, b.labels)).expect("batch"))
            .collect()
    }

    #[test]
    fn batches_do_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().expect("tmp");
        let items = Arc::new(dataset(dir.path(), 10));
        let cache = Arc::new(ImageCache::new(&dir.path().join("cache"), "v1", 16));
        let one = collect(&items, &cache, 1, 0);
        assert_eq!(one.len(), 3);
        assert_eq!(one.iter().map(|b| b.1.len()).sum::<usize>(), 10);
        assert_eq!(one[0].0.len(), 4 * 16 * 16);
        assert_eq!(one, collect(&items, &cache, 3, 0));
        assert_ne!(one, collect(&items, &cache, 2, 1), "another epoch, another order and augmentation");
    }

    #[test]
    fn a_corrupt_image_is_skipped_and_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut list = dataset(dir.path(), 6);
        std::fs::write(dir.path().join("bad.png"), b"not a png").expect("write");
        list.push(LoaderItem {
            path: dir.path().join("bad.png"),
            name: "bad.png".to_owned(),
            sha256: hex::encode(Sha256::digest(b"not a png")),
            label: 0,
        });
        let items = Arc::new(list);
        let cache = Arc::new(ImageCache::new(&dir.path().join("cache"), "v1", 16));
        let batches: Vec<Batch> = Batches::new(items.clone(), cache.clone(), config(2), 0).map(|b| b.expect("batch")).collect();
        assert_eq!(batches.iter().map(Batch::len).sum::<usize>(), 6);
        let skipped: Vec<&(String, String)> = batches.iter().flat_map(|b| &b.skipped).collect();
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].1.contains("not an image"), "{}", skipped[0].1);
        assert_eq!(skipped[0].0, "bad.png");
        let root = dir.path().display().to_string();
        assert!(!skipped[0].1.contains(&root), "no path of this machine in a reason: {}", skipped[0].1);

        // Change a registered file: the next epoch that has to read it refuses.
        let fresh = Arc::new(ImageCache::new(&dir.path().join("cache2"), "v1", 16));
        image::GrayImage::new(40, 30).save(&items[2].path).expect("overwrite");
        let result: Result<Vec<Batch>, LoadError> = Batches::new(items, fresh, config(2), 0).collect();
        let err = result.expect_err("changed file");
        assert!(matches!(err, LoadError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("changed since the dataset version was registered"));
        assert!(err.to_string().starts_with("2.png ") && !err.to_string().contains(&root), "{err}");
    }
}
