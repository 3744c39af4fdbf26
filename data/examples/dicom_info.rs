//! Prints how dicom-rs sees a DICOM file's pixel data: `cargo run -p data --example dicom_info -- FILE`.
use dicom_pixeldata::PixelDecoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: dicom_info FILE")?;
    let obj = dicom_object::open_file(&path)?;
    println!("transfer syntax {}", obj.meta().transfer_syntax());
    let d = obj.decode_pixel_data()?;
    println!(
        "{}x{} frames {} spp {} bits allocated {} stored {} photometric {} bytes {}",
        d.columns(),
        d.rows(),
        d.number_of_frames(),
        d.samples_per_pixel(),
        d.bits_allocated(),
        d.bits_stored(),
        d.photometric_interpretation(),
        d.data().len()
    );
    let nonzero = d.data().iter().filter(|b| **b != 0).count();
    println!("non-zero bytes {nonzero}");
    if let Some(other) = std::env::args().nth(2) {
        let o = dicom_object::open_file(&other)?;
        let od = o.decode_pixel_data()?;
        let same = od.data() == d.data();
        println!("pixel data identical to {other}: {same}");
    }
    Ok(())
}
