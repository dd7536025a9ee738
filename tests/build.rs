//! Build the WebAssembly guests once (through `scripts/build-plugins`) and
//! tell the tests where they are.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    for dir in [
        "guest-sdk",
        "examples/hello",
        "plugins",
        "tests/guests",
        "scripts/build-plugins",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/build-plugins"))
        .current_dir(&root);
    // The nested cargo must not inherit this build's target settings.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key == "RUSTFLAGS"
            || key.starts_with("RUSTC")
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("cannot run bash scripts/build-plugins");
    assert!(
        status.success(),
        "building the WebAssembly guests failed (see above)"
    );
    println!(
        "cargo:rustc-env=ENGINE_PLUGINS_DIR={}",
        root.join("target/plugins").display()
    );
    println!(
        "cargo:rustc-env=ENGINE_TEST_GUESTS_DIR={}",
        root.join("target/guests/wasm32-wasip2/release").display()
    );
}
