//! The cell cache: a later run that plans the same cell reuses it; what a
//! cell reads decides what reruns; failed cells rerun, and only they.

use crate::util::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A DeepEcho sweep over the two smallest shipped datasets, copied into the
/// run's folder (so that a test may change them), with `models` as given.
fn sweep(dir: &Path, models: &str) {
    let data = dir.join("data");
    if !data.exists() {
        copy_dir(&root().join("plugins/deepecho/data"), &data);
    }
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[run]\nfunction = \"deepecho.benchmark.run_benchmark\"\ndata = \"data\"\nseed = 3\n\
             [run.args]\ndatasets = [\"PickupGestureWiimoteZ\", \"Tecator\"]\nmodels = {models}\n\
             metrics = [\"sdmetrics_score\"]\nmax_entities = 20\n\
             [cluster]\nworkers = 2\n[output]\npath = \"out/results.csv\"\n"
        ),
    )
    .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The provenance record's cells: (`model/dataset`, or `shard`) → where its part
/// came from (`cache`, `earlier`, `run`).
fn cells_from(meta: &Path) -> BTreeMap<String, String> {
    let meta: Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
    meta["cells"]["each"]
        .as_array()
        .unwrap_or_else(|| panic!("no cells in {meta}"))
        .iter()
        .map(|c| {
            let key = ["model", "dataset", "shard"]
                .iter()
                .filter_map(|k| c["key"].get(k))
                .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join("/");
            (key, c["from"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The cells of [`cells_from`] computed by the run (not reused, not earlier).
fn computed(cells: &BTreeMap<String, String>) -> Vec<&String> {
    cells
        .iter()
        .filter(|(_, f)| *f == "run")
        .map(|(k, _)| k)
        .collect()
}

/// The table's lines whose first cell (the model) is `model`.
fn lines_of(csv: &str, model: &str) -> Vec<String> {
    csv.lines()
        .filter(|l| l.split(',').next() == Some(model))
        .map(str::to_owned)
        .collect()
}

/// `engine run -vv`, whose debug log has a `shard finished` line for each
/// shard a worker ran.
fn run(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["-vv", "run", "config.toml"];
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

/// How many shards the workers ran, from the run's log.
fn executed(o: &std::process::Output) -> usize {
    stderr(o).matches("shard finished").count()
}

#[test]
fn a_model_added_to_a_sweep_runs_only_its_own_cells() {
    let dir = tempfile::tempdir().unwrap();
    sweep(
        dir.path(),
        "{ RealDataBaseline = {}, UniformBaseline = {} }",
    );
    let o = run(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read_to_string(dir.path().join("out/results.csv")).unwrap();
    let meta = dir.path().join("out/results.meta.json");
    assert!(
        cells_from(&meta).values().all(|f| f == "run"),
        "{:?}",
        cells_from(&meta)
    );
    assert_eq!(executed(&o), 4);

    sweep(
        dir.path(),
        "{ RealDataBaseline = {}, UniformBaseline = {}, PARModel = { epochs = 2 } }",
    );
    let o = run(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("4 of 6 cells reused from the cache"),
        "{}",
        stderr(&o)
    );
    assert_eq!(executed(&o), 2, "only the new model's 2 cells ran");
    let cells = cells_from(&meta);
    let ran = computed(&cells);
    assert_eq!(
        ran,
        ["PARModel/PickupGestureWiimoteZ", "PARModel/Tecator"],
        "only the new model's cells ran: {cells:?}"
    );
    let second = std::fs::read_to_string(dir.path().join("out/results.csv")).unwrap();
    assert_eq!(
        first.lines().next(),
        second.lines().next(),
        "the same columns"
    );
    for model in ["RealDataBaseline", "UniformBaseline"] {
        assert_eq!(lines_of(&first, model).len(), 2);
        assert_eq!(
            lines_of(&first, model),
            lines_of(&second, model),
            "{model}'s rows (timings included) are the first run's, byte for byte"
        );
    }
    assert_eq!(lines_of(&second, "PARModel").len(), 2);
    // `engine report` heads its text with the provenance record's essentials.
    let o = run_in(dir.path(), &["report", "out/results.csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o)
            .contains("6 cells (0 from an earlier run, 4 from the cache, 2 computed), 0 failed"),
        "{}",
        stdout(&o)
    );

    // A dataset file changed: exactly the cells that read that dataset run.
    let csv = dir.path().join("data/Tecator/Tecator.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let o = run(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 of 6 cells reused"), "{}", stderr(&o));
    assert_eq!(executed(&o), 3);
    let cells = cells_from(&meta);
    let ran = computed(&cells);
    assert_eq!(
        ran,
        [
            "PARModel/Tecator",
            "RealDataBaseline/Tecator",
            "UniformBaseline/Tecator"
        ],
        "{cells:?}"
    );

    // `--no-cache`: every cell runs, and the summary says the cache was off.
    let o = run(dir.path(), &["--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cache off"), "{}", stderr(&o));
    assert_eq!(executed(&o), 6);
    assert!(cells_from(&meta).values().all(|f| f == "run"));
}

/// `faulty.misbehave` over 4 shards, shard 2 taking 2 s, with the run kept
/// in the store `store` beside the config.
fn slow_shard(dir: &Path, timeout: &str) {
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\nshards = 4\nbad = 2\nhow = \"slow\"\n\
             [cluster]\nworkers = 2\nstore = \"store\"\n[limits]\ntimeout = \"{timeout}\"\n\
             [output]\npath = \"out/result.csv\"\n"
        ),
    )
    .unwrap();
}

fn claims(dir: &Path) -> Vec<String> {
    let runs = dir.join("store/runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut out = Vec::new();
    for shard in std::fs::read_dir(run.join("claims")).unwrap() {
        let shard = shard.unwrap();
        for attempt in std::fs::read_dir(shard.path()).unwrap() {
            out.push(format!(
                "{}/{}",
                shard.file_name().to_string_lossy(),
                attempt.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn rerun_failed_after_raising_the_timeout_runs_only_the_timed_out_cell() {
    let dir = tempfile::tempdir().unwrap();
    slow_shard(dir.path(), "1s");
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert!(rows[2].iter().any(|c| c.starts_with("timeout")), "{rows:?}");
    let before = claims(dir.path());
    assert_eq!(before.len(), 4, "{before:?}");

    // The limits are not part of the run id: the same run resumes, and has
    // nothing left to run.
    slow_shard(dir.path(), "30s");
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("4 of 4 shards already finished"),
        "{}",
        stderr(&o)
    );
    assert_eq!(claims(dir.path()), before, "nothing ran");

    let o = run_command(dir.path())
        .arg("--rerun-failed")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rerunning the 1 failed cells"),
        "{}",
        stderr(&o)
    );
    let cells = cells_from(&dir.path().join("out/result.meta.json"));
    assert_eq!(cells["2"], "run", "{cells:?}");
    assert!(
        ["0", "1", "3"].iter().all(|k| cells[*k] == "earlier"),
        "{cells:?}"
    );
    let after = claims(dir.path());
    assert_eq!(
        after, before,
        "shard 2 claimed anew as attempt 0, no other shard claimed"
    );
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(rows[2][1], "4", "shard 2 squared: {rows:?}");
}

#[test]
fn a_failed_cell_is_never_reused_and_a_damaged_entry_is_not_used() {
    // Two runs in memory, the cache beside the config: the timed-out cell is
    // not in the cache, so the second run (a new run: its data, seed and
    // arguments are the same, but its store is gone) runs it again.
    let dir = faulty_config("shards = 4\nbad = 2\nhow = \"slow\"", 2, "timeout = \"1s\"");
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let cache = dir.path().join(".engine/cache");
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 3, "the 3 good cells are cached: {entries:?}");

    // One entry damaged on disk: it is reported, not used, and recomputed.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&entries[0], bytes).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 of 4 cells reused"), "{}", stderr(&o));
    assert!(stderr(&o).contains("is damaged"), "{}", stderr(&o));
    let cells = cells_from(&dir.path().join("out/result.meta.json"));
    assert_eq!(cells["2"], "run", "the failed cell ran again: {cells:?}");
}

#[test]
fn runs_and_the_cache_are_listed_and_pruned_per_tenant() {
    let dir = faulty_config("shards = 3", 1, "");
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let with = |tenant: &str| {
        config
            .replace("seed = 7", &format!("seed = 7\ntenant = \"{tenant}\""))
            .replace("[cluster]", "[cluster]\nstore = \"store\"")
    };
    std::fs::write(dir.path().join("config.toml"), with("a")).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Another tenant's run of the same cells reuses none of them.
    std::fs::write(dir.path().join("config.toml"), with("b")).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("reused"), "{}", stderr(&o));

    let o = run_in(dir.path(), &["runs", "--store", "store", "--tenant", "a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[1..4], ["3", "3", "0"], "{listed}");
    assert!(listed.contains("faulty.misbehave"), "{listed}");
    assert_eq!(listed.lines().count(), 2, "one run for tenant a: {listed}");

    let o = run_in(dir.path(), &["cache", "--store", "store", "--tenant", "a"]);
    assert!(
        stdout(&o).contains(": 3 cells,"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let prune = |older: &str| {
        let args = ["cache", "prune", "--older-than", older];
        let o = run_in(
            dir.path(),
            &[&args[..], &["--store", "store", "--tenant", "a"]].concat(),
        );
        format!("{}{}", stdout(&o), stderr(&o))
    };
    let pruned = prune("1h");
    assert!(pruned.contains("deleted 0 cells"), "{pruned}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let pruned = prune("1s");
    assert!(pruned.contains("deleted 3 cells"), "{pruned}");
    let o = run_in(dir.path(), &["cache", "--store", "store", "--tenant", "b"]);
    assert!(
        stdout(&o).contains(": 3 cells,"),
        "tenant b's cache is its own: {}",
        stdout(&o)
    );
}
