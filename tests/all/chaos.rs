//! The chaos guest (`tests/guests/chaos`) calls the host imports at random.
//! After each run: the engine ended by itself with 0 or 1, the results file
//! parses, every shard has its rows (a failed one exactly one, with an
//! error), and nothing was written outside the output's folder.
//!
//! `ENGINE_CHAOS_SEEDS=A..B` picks the seeds (default `0..20`);
//! `scripts/fuzz-chaos` runs many more.

use crate::util::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn seeds() -> std::ops::Range<u64> {
    let text = std::env::var("ENGINE_CHAOS_SEEDS").unwrap_or_else(|_| "0..20".into());
    let (a, b) = text.split_once("..").expect("ENGINE_CHAOS_SEEDS is A..B");
    a.parse().unwrap()..b.parse().unwrap()
}

/// Every file below `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

fn check_seed(seed: u64, shards: usize) {
    // Every fourth seed keeps the run in a directory store, where object
    // names become file names.
    let store = if seed % 4 == 3 {
        "store = \"store\"\n"
    } else {
        ""
    };
    // Odd seeds allow a helper per shard: the guest starts them at random.
    let threads = 1 + seed % 2;
    let dir = config(&format!(
        "[run]\nfunction = \"chaos.run\"\n[run.args]\nshards = {shards}\nseed = {seed}\n\
         [cluster]\nworkers = 3\n{store}\
         [limits]\nmemory = \"64M\"\ntimeout = \"2s\"\noutput_size = \"4M\"\nlog_size = \"256K\"\noutputs = 50\n\
         threads = {threads}\n[output]\npath = \"out/result.csv\"\n"
    ));
    let mut child = engine()
        .args([
            "run",
            "config.toml",
            "-q",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("seed {seed}: the engine hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "seed {seed}: the engine ended with {:?}: {err}",
        o.status
    );
    let text = std::fs::read(dir.path().join("out/result.csv"))
        .unwrap_or_else(|e| panic!("seed {seed}: no results ({e}): {err}"));
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header.first().map(String::as_str),
        Some("shard"),
        "seed {seed}"
    );
    assert_eq!(
        header.last().map(String::as_str),
        Some("error"),
        "seed {seed}"
    );
    let mut rows: Vec<(usize, bool)> = Vec::new();
    for r in reader.records() {
        let r = r.unwrap_or_else(|e| panic!("seed {seed}: the results file is broken: {e}"));
        assert_eq!(r.len(), header.len(), "seed {seed}");
        let error = &r[header.len() - 1];
        assert!(
            !error.contains(['\x1b', '\x07', '\r']),
            "seed {seed}: {error:?}"
        );
        rows.push((r[0].parse().unwrap(), !error.is_empty()));
    }
    let mut i = 0;
    for shard in 0..shards {
        let mine: Vec<bool> = rows
            .iter()
            .skip(i)
            .take_while(|(s, _)| *s == shard)
            .map(|(_, f)| *f)
            .collect();
        i += mine.len();
        if mine.contains(&true) {
            assert_eq!(
                mine,
                [true],
                "seed {seed}: failed shard {shard} has one row"
            );
        }
        // A shard that pushed no row and succeeded has none: fine.
    }
    assert_eq!(
        i,
        rows.len(),
        "seed {seed}: rows in shard order, none stray"
    );
    for f in files(dir.path()) {
        // The engine's own: the run (in the store) and the cell cache (in
        // the store, or beside the config for a run in memory), one `.cell`
        // object a cell.
        let cell = |prefix: &str| {
            f.strip_prefix(prefix)
                .is_some_and(|c| c.len() == 69 && c.ends_with(".cell") && !c.contains('/'))
        };
        let ok = f == "config.toml"
            || f.starts_with("out/")
            || (!store.is_empty() && (f.starts_with("store/runs/") || cell("store/cache/")))
            || (store.is_empty() && cell(".engine/cache/"));
        assert!(ok, "seed {seed}: wrote `{f}`");
    }
    for f in files(&dir.path().join("out")) {
        assert!(
            f == "result.csv" || f == "result.meta.json" || f.starts_with("result.outputs/"),
            "seed {seed}: wrote `out/{f}`"
        );
    }
}

#[test]
fn the_chaos_guest_cannot_break_a_run() {
    for seed in seeds() {
        check_seed(seed, 6);
    }
}
