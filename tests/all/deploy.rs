//! What an operator applies.

use crate::util::*;
use std::process::Command;

#[test]
fn manifests_validate_against_the_official_schemas() {
    let o = Command::new("bash")
        .arg("deploy/validate.sh")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
}
