//! `engine run` end to end on the local worker pool.

use crate::util::*;

#[test]
fn hello_example_writes_the_table() {
    let out = tempfile::tempdir().unwrap();
    let csv = out.path().join("hello.csv");
    let o = run_in(
        &root(),
        &[
            "run",
            "examples/hello/config.toml",
            "--output",
            csv.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "engine run failed: {}", stderr(&o));
    let (header, rows) = read_csv(&csv);
    assert_eq!(header, ["name", "round", "message", "letters", "error"]);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald"],
        "rows in shard order"
    );
    assert_eq!(rows[1], ["Grace", "0", "Hello, Grace!", "5", ""]);
    assert!(
        stderr(&o).contains("done: 6 shards (6 ok, 0 failed)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_trapping_shard_gives_one_error_row_and_exit_1() {
    let dir = faulty_config("shards = 5\nbad = 2\nhow = \"trap\"", 2, "");
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(header, ["shard", "square", "random", "error"]);
    assert_eq!(rows.len(), 5);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        if i == 2 {
            assert_eq!(row[1], "", "no result for the failed shard");
            assert!(row[3].starts_with("trap: "), "classified error: {}", row[3]);
            assert!(
                row[3].contains("unreachable") || row[3].contains("panic"),
                "{}",
                row[3]
            );
        } else {
            assert_eq!(row[1], (i * i).to_string());
            assert_eq!(row[3], "");
        }
    }
    assert!(
        stderr(&o).contains("5 shards (4 ok, 1 failed)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_guest_error_is_retried_then_reported() {
    let dir = faulty_config("shards = 3\nbad = 0\nhow = \"error\"", 1, "retries = 2");
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(rows[0][3], "guest-error: shard asked to fail");
    assert_eq!(rows[1][1], "1");
}

#[test]
fn same_seed_same_bytes_with_1_and_4_workers() {
    let mut outputs = Vec::new();
    for workers in [1, 4] {
        let dir = faulty_config("shards = 12", workers, "");
        let o = run_in(
            dir.path(),
            &[
                "run",
                "config.toml",
                "--plugins",
                guests_dir().to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        outputs.push(std::fs::read(dir.path().join("out/result.csv")).unwrap());
    }
    assert_eq!(outputs[0], outputs[1], "byte-identical output");
    // The seed reaches the guest's randomness: the random column varies by shard.
    let text = String::from_utf8(outputs[0].clone()).unwrap();
    let randoms: std::collections::HashSet<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert!(randoms.len() > 6, "per-shard seeds differ: {text}");
}

#[test]
fn a_different_seed_changes_the_random_column() {
    let a = faulty_config("shards = 3", 1, "");
    let text = std::fs::read_to_string(a.path().join("config.toml"))
        .unwrap()
        .replace("seed = 7", "seed = 8");
    let b = config(&text);
    for d in [&a, &b] {
        let o = run_in(
            d.path(),
            &[
                "run",
                "config.toml",
                "--plugins",
                guests_dir().to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let ra = std::fs::read(a.path().join("out/result.csv")).unwrap();
    let rb = std::fs::read(b.path().join("out/result.csv")).unwrap();
    assert_ne!(ra, rb);
}

/// The `random` column of each shard of a `faulty` run with `args`.
fn random_by_shard(args: &str) -> Vec<(String, String)> {
    let dir = faulty_config(args, 2, "");
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (shard, random) = (col("shard"), col("random"));
    rows.iter()
        .map(|r| (r[shard].clone(), r[random].clone()))
        .collect()
}

#[test]
fn a_cell_keeps_its_randomness_when_the_plan_around_it_changes() {
    // Shards 1 and 2 are at indices 1 and 2 of the first plan, 0 and 1 of
    // the second: their seeds derive from the cell, not from its index.
    let all = random_by_shard("shards = 3");
    let later = random_by_shard("shards = 2\nfirst = 1");
    assert_eq!(all[1..], later[..], "{all:?} vs {later:?}");
    // The column is random (else this showed nothing).
    assert_ne!(all[1].1, all[2].1);
}

#[test]
fn a_provenance_record_sits_beside_the_table_without_secrets() {
    let dir = faulty_config("shards = 3\nbad = 1\nhow = \"error\"", 2, "");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[output]\n",
        "[output]\nkey = \"AKIDEXAMPLE\"\nsecret_key = \"very-secret-value\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let meta_path = dir.path().join("out/result.meta.json");
    let text = std::fs::read_to_string(&meta_path).expect("out/result.meta.json");
    assert!(
        !text.contains("very-secret-value") && !text.contains("AKIDEXAMPLE"),
        "{text}"
    );
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let component = std::fs::read(guests_dir().join("faulty.wasm")).unwrap();
    assert_eq!(
        meta["run"]["component"]["sha256"],
        engine::runtime::sha256_hex(&component)
    );
    assert_eq!(meta["engine"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["run"]["function"], "faulty.misbehave");
    assert_eq!(meta["run"]["seed"], 7);
    // The config as resolved, without its secrets.
    assert_eq!(meta["config"]["output"]["path"], "out/result.csv");
    assert!(meta["config"]["output"].get("secret_key").is_none());
    assert_eq!(meta["cells"]["shards"], 3);
    assert_eq!(meta["cells"]["failed"], 1);
    assert!(meta["run"]["wit"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(meta["host"]["cpus"].as_u64().is_some_and(|n| n >= 1));
}

#[test]
fn a_plan_of_several_pages_runs_every_shard_once_and_resumes() {
    // 20,001 shards, made by the guest as the engine takes them: three pages
    // of `shards/` (10,000 a page), read by the workers a page at a time.
    let dir =
        faulty_config("shards = 20001\nplan = \"lazy\"", 2, "").tap_config("store = \"store\"\n");
    let o = run_command(dir.path()).arg("--no-cache").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    let at = header.iter().position(|c| c == "shard").unwrap();
    let shards: Vec<i64> = rows.iter().map(|r| r[at].parse().unwrap()).collect();
    assert_eq!(
        shards,
        (0..20001).collect::<Vec<i64>>(),
        "every shard once, in order"
    );
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("store/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut pages: Vec<String> = std::fs::read_dir(runs[0].join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(pages, ["00000000.json", "00000001.json", "00000002.json"]);
    // Run again: every page is there, every shard finished; nothing runs.
    let o = run_command(dir.path()).arg("--no-cache").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("20001 of 20001 shards already finished"),
        "{}",
        stderr(&o)
    );
}
