//! `cobb models`: every architecture with its parameter count and native resolution.

use clap::Args;
use protocol::spec::Arch;

use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
}

pub fn run(args: &ModelsArgs, json: bool) -> Result<(), Failure> {
    if args.classes == 0 || args.channels == 0 {
        return Err(Failure::input("--classes and --channels must be at least 1"));
    }
    let rows: Vec<(Arch, usize, u32)> = Arch::ALL
        .iter()
        .map(|&arch| (arch, worker::models::trainable_parameters(arch, args.channels, args.classes), arch.native_resolution()))
        .collect();
    if json {
        let list: Vec<serde_json::Value> =
            rows.iter().map(|(a, p, r)| serde_json::json!({"arch": a.as_str(), "parameters": p, "native_resolution": r})).collect();
        output::json(&list);
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows.iter().map(|(a, p, r)| vec![a.to_string(), format!("{p}"), format!("{r}")]).collect();
    output::table(&["ARCH", "PARAMETERS", "NATIVE PX"], &table);
    eprintln!("(trainable parameters for {} classes and {} input channel(s))", args.classes, args.channels);
    Ok(())
}
