//! What an operator applies, and the fixture the Kubernetes tests stand on.

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

#[test]
fn real_kubectl_drives_the_api_fixture() {
    let o = Command::new("python3")
        .arg("tests/fixtures/test_k8s_api.py")
        .current_dir(root())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" 0 failed") && !last.starts_with("0 passed"),
        "{last}"
    );
}
