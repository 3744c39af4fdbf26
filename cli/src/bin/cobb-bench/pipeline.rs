//! `cobb-bench data`: phantom generation, decoding of large radiographs, the loader.

use crate::harness::{parallel, rate};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// Phantoms rendered per measurement.
    #[arg(long, default_value_t = 200)]
    phantoms: usize,
    /// Decodes per measurement of the large images.
    #[arg(long, default_value_t = 24)]
    decodes: usize,
}

pub(crate) fn data_bench(args: &DataArgs) -> Result<()> {
    use data::phantoms::{self, render};
    use data::{cache::ImageCache, decode, loader};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;
    println!("data benchmarks on {threads} threads (release build expected)");

    // 1. Phantoms at 256 px: rendering alone on one core, then generation with PNG files on all.
    let patient = render::Patient::random(&mut protocol::rng::SplitMix64::new(1));
    let phases =
        [render::Phase::Preop, render::Phase::PreopBrace, render::Phase::Fusion, render::Phase::GrowingRods, render::Phase::Tether];
    let one = parallel(args.phantoms, 1, |i| {
        let shot =
            render::Shot { view: if i % 2 == 0 { render::View::Ap } else { render::View::Lat }, phase: phases[i % 5], seed: i as u64 };
        std::hint::black_box(render::render(&patient, &shot, 256));
    });
    let options = phantoms::Options {
        count: args.phantoms * 2,
        size: 256,
        seed: 1,
        format: phantoms::Format::Png,
        balance: phantoms::Balance::Uniform,
    };
    let start = Instant::now();
    phantoms::generate(&dir.path().join("ph"), &options)?;
    let all = rate(options.count, start);
    println!("phantoms 256 px: render {one:.0} images/s on 1 thread; render + PNG files {all:.0} images/s on {threads} threads");

    // 2. Decode + resize to 256 px of a 2048 x 2048 16-bit DICOM and PNG.
    let big = dir.path().join("big");
    let big_options =
        phantoms::Options { count: 10, size: 2048, seed: 2, format: phantoms::Format::Dicom, balance: phantoms::Balance::Uniform };
    phantoms::generate(&big, &big_options)?;
    let dicom = std::fs::read_to_string(big.join("manifest.csv"))?
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .map(|p| big.join(p))
        .context("no phantom DICOM")?;
    let (img, _) = decode::decode_file(&dicom)?;
    let png = dir.path().join("big16.png");
    let data: Vec<u16> = img.pixels.iter().map(|v| (v * 65535.0) as u16).collect();
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2048, 2048, data).context("png size")?.save(&png)?;
    for (label, path) in [("DICOM 16-bit 2048x2048", &dicom), ("PNG 16-bit 2048x2048", &png)] {
        let work = |_: usize| {
            let (img, _) = decode::decode_file(path).expect("decodes");
            std::hint::black_box(decode::fit_square(&img, 256));
        };
        let single = parallel(args.decodes, 1, work);
        let multi = parallel(args.decodes, threads, work);
        println!("decode + resize to 256 px, {label}: {single:.1} images/s on 1 thread, {multi:.1} on {threads}");
    }

    // 3. The loader: 128 px batches of 16 with augmentation, cold cache then warm.
    let manifest = std::fs::read_to_string(dir.path().join("ph/manifest.csv"))?;
    let items: Vec<loader::LoaderItem> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|rel| {
            let path = dir.path().join("ph").join(rel);
            let sha256 = data::manifest::hash_file(&path).map(|h| h.0).unwrap_or_default();
            loader::LoaderItem { path, name: rel.to_owned(), sha256, label: 0 }
        })
        .collect();
    let items = Arc::new(items);
    let cache = Arc::new(ImageCache::new(&dir.path().join("cache"), "bench", 128));
    let config = loader::LoaderConfig {
        batch_size: 16,
        seed: 1,
        shuffle: true,
        augment: Some(protocol::spec::AugmentSpec {
            rotate_deg: 5.0,
            scale: [0.95, 1.05],
            translate: 0.03,
            brightness: 0.1,
            contrast: 0.1,
            noise: 0.02,
            gamma: 0.1,
            hflip: false,
        }),
        threads,
        prefetch: 2,
    };
    for (label, epoch) in [("cold cache (decode + resize + augment)", 0), ("warm cache (augment)", 1)] {
        let start = Instant::now();
        let mut n = 0;
        for batch in loader::Batches::new(items.clone(), cache.clone(), config.clone(), epoch) {
            n += batch?.len();
        }
        println!("loader, 128 px batches of 16, {label}: {:.0} images/s on {threads} threads", rate(n, start));
    }
    Ok(())
}
