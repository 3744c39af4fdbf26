//! Decodes a radiograph (DICOM, PNG or JPEG) the way cobb reads it and writes what cobb
//! sees as an 8-bit PNG, fitted into a square: `cargo run -p data --example
//! decode_to_png -- IN OUT.png [SIZE]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        return Err("usage: decode_to_png IN OUT.png [SIZE]".into());
    };
    let size: usize = args.get(3).map_or(Ok(512), |s| s.parse())?;
    let (img, ids) = data::decode::decode_file(std::path::Path::new(input))?;
    let fitted = data::decode::fit_square(&img, size);
    let data: Vec<u8> = fitted.iter().map(|v| (v * 255.0).round() as u8).collect();
    image::GrayImage::from_raw(size as u32, size as u32, data).ok_or("size")?.save(output)?;
    println!("{}x{} -> {output} ({ids:?})", img.width, img.height);
    Ok(())
}
