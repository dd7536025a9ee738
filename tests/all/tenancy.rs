//! Two tenants on one backend and one store, one of them hostile: the other's
//! results are exactly what it gets alone, and nothing of it is reachable.

use crate::util::*;
use std::path::Path;

/// A `faulty.misbehave` run for `tenant`, with a data dir, on the processes
/// backend with the given store.
fn tenant_config(tenant: &str, args: &str, store: &Path, limits: &str) -> tempfile::TempDir {
    let dir = faulty_config(args, 2, limits);
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/inside.txt"), format!("{tenant} data")).unwrap();
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "seed = 7",
            &format!("seed = 7\ntenant = \"{tenant}\"\ndata = \"data\""),
        )
        .replace(
            "[cluster]\n",
            &format!(
                "[cluster]\nbackend = \"processes\"\nlease = \"2s\"\nstore = \"{}\"\n",
                store.display()
            ),
        );
    std::fs::write(&path, text).unwrap();
    dir
}

fn spawn_run(dir: &Path) -> std::process::Child {
    engine()
        .args([
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ])
        .current_dir(dir)
        .env("AWS_SECRET_ACCESS_KEY", "tenant-a-secret")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_hostile_tenant_cannot_disturb_or_read_another() {
    let solo_store = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let args = "shards = 8\nsleep_ms = 100";
    let solo = tenant_config("team-a", args, solo_store.path(), "");
    let o = run_in(
        solo.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let a = tenant_config("team-a", args, shared.path(), "");
    let spin = tenant_config(
        "team-b",
        "shards = 4\nbad = 0\nhow = \"spin\"",
        shared.path(),
        "timeout = \"3s\"",
    );
    let hog = tenant_config(
        "team-b",
        "shards = 4\nbad = 2\nhow = \"alloc\"",
        shared.path(),
        "memory = \"256M\"",
    );
    let probe = tenant_config(
        "team-b",
        "shards = 2\nbad = 0\nhow = \"probe\"",
        shared.path(),
        "",
    );
    // The prober's data dir links to tenant A's data.
    std::os::unix::fs::symlink(
        a.path().join("data/inside.txt"),
        probe.path().join("data/escape"),
    )
    .unwrap();

    let runs: Vec<_> = [&a, &spin, &hog, &probe]
        .iter()
        .map(|d| spawn_run(d.path()))
        .collect();
    let outputs: Vec<_> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert!(
        outputs[0].status.success(),
        "tenant A: {}",
        stderr(&outputs[0])
    );
    for (o, name) in outputs[1..].iter().zip(["spin", "hog"]) {
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(o));
    }
    assert!(
        outputs[3].status.success(),
        "probe: {}",
        stderr(&outputs[3])
    );

    let alone = std::fs::read(solo.path().join("out/result.csv")).unwrap();
    let together = std::fs::read(a.path().join("out/result.csv")).unwrap();
    assert_eq!(
        alone, together,
        "tenant A's table does not depend on its neighbours"
    );

    let (header, rows) = read_csv(&probe.path().join("out/result.csv"));
    let cell = |k: &str| rows[0][header.iter().position(|h| h == k).unwrap()].clone();
    assert_eq!(cell("read_data"), "ALLOWED: \"team-b data\"");
    assert!(
        cell("read_symlink").starts_with("denied"),
        "{}",
        cell("read_symlink")
    );
    assert!(cell("env").starts_with("denied"), "{}", cell("env"));
    let probe_csv = std::fs::read_to_string(probe.path().join("out/result.csv")).unwrap();
    assert!(
        !probe_csv.contains("team-a") && !probe_csv.contains("tenant-a-secret"),
        "{probe_csv}"
    );

    // Each tenant's runs live under its own prefix of the shared store.
    let tenants: Vec<String> = std::fs::read_dir(shared.path().join("tenants"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(tenants.len(), 2, "{tenants:?}");
    assert!(
        !shared.path().join("runs").exists(),
        "no run outside a tenant prefix"
    );
}
