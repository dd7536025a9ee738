//! The kernels natively: `kernels-native [--data DIR] [KERNEL…]` runs each kernel once
//! (all of them by default) and prints one JSON line per kernel on stdout,
//! `{"workload": "kernel/NAME", "side": "native", "seconds": S}`; checksums go to stderr.

use std::path::PathBuf;

fn main() {
    let mut data: PathBuf = std::env::var_os("ENGINE_DATA_DIR").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../plugins/deepecho/data"
            ))
        },
        PathBuf::from,
    );
    let mut kernels: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--data" {
            let Some(d) = args.next() else {
                eprintln!("--data needs a directory");
                std::process::exit(2);
            };
            data = d.into();
        } else {
            kernels.push(a);
        }
    }
    if kernels.is_empty() {
        kernels = kernels::KERNELS.iter().map(|k| (*k).to_owned()).collect();
    }
    for k in &kernels {
        match kernels::run_kernel(k, &data) {
            Ok(t) => {
                println!(
                    "{{\"workload\": \"kernel/{k}\", \"side\": \"native\", \"seconds\": {}}}",
                    t.seconds
                );
                eprintln!("native {k}: {:.4} s, checksum {}", t.seconds, t.checksum);
            }
            Err(e) => {
                eprintln!("native {k}: {e}");
                std::process::exit(1);
            }
        }
    }
}
