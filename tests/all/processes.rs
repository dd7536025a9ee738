//! The `processes` backend: `engine worker` processes coordinating through a
//! local-directory store, with real SIGKILLs.

use crate::util::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pid of a worker process that holds the claim of an unfinished shard.
fn busy_worker(dir: &Path) -> Option<i32> {
    let run = std::fs::read_dir(dir.join("store/runs"))
        .ok()?
        .flatten()
        .next()?
        .path();
    for pid in worker_pids(dir) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let id = args
            .iter()
            .position(|a| a == "--id")
            .and_then(|i| args.get(i + 1))?;
        for shard in std::fs::read_dir(run.join("claims")).ok()?.flatten() {
            let name = shard.file_name().to_string_lossy().into_owned();
            if run.join(format!("parts/{name}.csv")).exists() {
                continue;
            }
            for claim in std::fs::read_dir(shard.path()).ok()?.flatten() {
                let text = std::fs::read_to_string(claim.path()).unwrap_or_default();
                if text.contains(&format!("\"process\":\"{id}\"")) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// `engine status` of the (only) run in the store under `dir`.
fn status(dir: &Path) -> String {
    let runs = dir.join("store/runs");
    let run = std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let o = run_in(dir, &["status", &run, "--store", "store"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn field(status: &str, name: &str) -> usize {
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn three_worker_processes_give_the_same_table_as_threads() {
    let threads = faulty_config("shards = 10", 3, "");
    let o = run_in(
        threads.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let procs = processes_config("shards = 10", 3, "5s");
    let o = run_in(
        procs.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(threads.path().join("out/result.csv")).unwrap();
    let b = std::fs::read(procs.path().join("out/result.csv")).unwrap();
    assert_eq!(a, b);
    let s = status(procs.path());
    assert_eq!(field(&s, "finished"), 10, "{s}");
    assert_eq!(field(&s, "attempts"), 10, "each shard ran once: {s}");
    assert!(
        worker_pids(procs.path()).is_empty(),
        "workers exit when the run is done"
    );
}

#[test]
fn a_killed_worker_s_shard_is_run_again_and_counted_once() {
    let dir = processes_config("shards = 8\nsleep_ms = 700", 2, "1s");
    let child = run_command(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill a worker while it holds a claim on an unfinished shard.
    let started = Instant::now();
    let victim = loop {
        if let Some(pid) = busy_worker(dir.path()) {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no worker ever held a shard"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    sigkill(victim);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    let shards: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        shards,
        ["0", "1", "2", "3", "4", "5", "6", "7"],
        "one row per shard, none missing, none doubled"
    );
    assert!(rows.iter().all(|r| r[3].is_empty()));
    let s = status(dir.path());
    assert!(
        field(&s, "attempts") > 8,
        "the killed worker's shard was claimed again: {s}"
    );
}

#[test]
fn a_killed_orchestrator_resumes_without_rerunning_finished_shards() {
    let dir = processes_config("shards = 12\nsleep_ms = 300", 2, "1s");
    let mut child = run_command(dir.path()).spawn().unwrap();
    // Let some shards finish, then kill the orchestrator (its workers die with it).
    let parts = || -> usize {
        let runs = dir.path().join("store/runs");
        std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_dir(e.path().join("parts")).ok())
            // Only finished parts: a worker killed mid-write leaves its
            // store's staging file (`<shard>.csv#<n>`) beside them.
            .map_or(0, |r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
                    .count()
            })
    };
    let started = Instant::now();
    while parts() < 4 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The workers die with it, a moment later (PR_SET_PDEATHSIG): one may
    // store a part in between.
    let started = Instant::now();
    while !worker_pids(dir.path()).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "workers outlived the orchestrator"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let finished_before = parts();
    assert!(finished_before < 12, "killed mid-run");
    let s = status(dir.path());
    let attempts_before = field(&s, "attempts");

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
    assert!(
        stderr(&o).contains(&format!("{finished_before} of 12 shards already finished")),
        "{}",
        stderr(&o)
    );
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(rows.len(), 12);
    let s = status(dir.path());
    // Every shard unfinished at the kill ran once more; no finished one ran again.
    let unfinished = 12 - finished_before;
    let attempts_after = field(&s, "attempts");
    assert!(
        attempts_after <= attempts_before + unfinished,
        "finished shards were not executed again: {attempts_before} + {unfinished} >= {attempts_after}"
    );
    assert!(attempts_after >= 12);
}

#[test]
fn an_unwritable_output_keeps_the_results_and_a_rerun_writes_them() {
    let dir = processes_config("shards = 4", 2, "5s");
    let blocker = dir.path().join("out");
    std::fs::write(&blocker, "a file where the output folder should be").unwrap();
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the results are kept in"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(&blocker).unwrap();
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
    assert!(
        stderr(&o).contains("4 of 4 shards already finished"),
        "no recomputation: {}",
        stderr(&o)
    );
    assert_eq!(read_csv(&dir.path().join("out/result.csv")).1.len(), 4);
}

#[test]
fn a_run_of_an_older_format_is_refused_by_name_and_its_cells_are_still_reused() {
    let dir = processes_config("shards = 3", 1, "5s");
    let run = || run_command(dir.path()).output().unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = published_run(dir.path());
    // The run as an engine of run format 4 left it.
    let spec_path = dir.path().join(format!("store/runs/{id}/run.json"));
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["format"] = 4.into();
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let o = run_in(
        dir.path(),
        &["worker", "--store", "store", "--run", &id, "--id", "old"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "run `{id}` was stored by an engine of run format 4"
        )) && err.contains("run the config again with this engine"),
        "{err}"
    );
    let o = run_in(dir.path(), &["runs", "--store", "store"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(run format 4: not resumable by this engine)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A run's cells do not depend on the layout: the config runs again,
    // every cell from the cache.
    std::fs::remove_dir_all(dir.path().join(format!("store/runs/{id}"))).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 of 3 cells reused from the cache"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read_csv(&dir.path().join("out/result.csv")).1.len(), 3);
}

/// The id of the (only) run in the store under `dir`, once it is published.
fn published_run(dir: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Some(run) = std::fs::read_dir(dir.join("store/runs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .filter(|e| e.path().join("run.json").exists())
        {
            return run.file_name().to_string_lossy().into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run was never published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `engine worker` on the run in `dir`'s store, named `id`, whose wall
/// clock is off by `skew_ms`.
fn skewed_worker(dir: &Path, run: &str, id: &str, skew_ms: i64) -> std::process::Child {
    engine()
        .args(["worker", "--store", "store", "--run", run, "--id", id])
        .env("ENGINE_CLOCK_SKEW_MS", skew_ms.to_string())
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Every claim object of the run in `dir` (`<shard>/<attempt>`), with the
/// process that made it.
fn claims(dir: &Path, run: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let root = dir.join(format!("store/runs/{run}/claims"));
    for shard in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for attempt in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(attempt.path()) else {
                continue;
            };
            // A claim being written may not be whole yet.
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            v.push((
                format!(
                    "{}/{}",
                    shard.file_name().to_string_lossy(),
                    attempt.file_name().to_string_lossy()
                ),
                record["process"].as_str().unwrap().to_owned(),
            ));
        }
    }
    v.sort();
    v
}

#[test]
fn a_worker_whose_clock_is_ten_minutes_off_takes_no_live_claim() {
    // One long shard, claimed by the run's own worker; then a second worker
    // joins and waits. With liveness judged by comparing clocks, a joiner
    // 10 minutes ahead, or a run 10 minutes behind, takes the live claim
    // over at once (the shard runs twice, attempt 1 appears).
    for (run_skew, joiner_skew) in [(0, 600_000), (-600_000, 0)] {
        let dir = processes_config("shards = 1\nsleep_ms = 4000", 1, "1s");
        let child = engine()
            .args([
                "run",
                "config.toml",
                "--plugins",
                guests_dir().to_str().unwrap(),
            ])
            .env("ENGINE_CLOCK_SKEW_MS", run_skew.to_string())
            .current_dir(dir.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let run = published_run(dir.path());
        let started = Instant::now();
        while claims(dir.path(), &run).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "never claimed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut joiner = skewed_worker(dir.path(), &run, "joiner", joiner_skew);
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(joiner.wait().unwrap().success());
        let claims = claims(dir.path(), &run);
        assert_eq!(
            claims.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
            ["00000000/0"],
            "skews {run_skew} / {joiner_skew} ms: {claims:?}"
        );
        assert_ne!(claims[0].1, "joiner");
        let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
        assert_eq!(rows.len(), 1);
    }
}

#[test]
fn a_killed_worker_whose_clock_is_ahead_has_its_shard_taken_over() {
    // With liveness judged by comparing clocks, the dead worker's last beat
    // would look fresh for 10 minutes, and the run would wait that long.
    let dir = processes_config("shards = 12\nsleep_ms = 500", 1, "1s");
    let mut child = run_command(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = published_run(dir.path());
    let mut ahead = skewed_worker(dir.path(), &run, "ahead", 600_000);
    let started = Instant::now();
    let held = loop {
        let parts = dir.path().join(format!("store/runs/{run}/parts"));
        let open = claims(dir.path(), &run)
            .into_iter()
            .find(|(c, p)| p == "ahead" && !parts.join(format!("{}.csv", &c[..8])).exists());
        if let Some((claim, _)) = open {
            break claim;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker ahead never held a shard"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    ahead.kill().unwrap();
    let _ = ahead.wait();
    // The run ends well before the 10 minutes (a guard, not a timing test).
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run still waits for the dead worker after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(rows.len(), 12, "one row per shard");
    let again = format!("{}/1", &held[..8]);
    assert!(
        claims(dir.path(), &run).iter().any(|(c, _)| *c == again),
        "shard {held} was taken over"
    );
}
