//! Hostile and buggy guests: the host stays up, the other shards finish with
//! correct results, and the bad shard's row says what happened.

use crate::util::*;

/// Run `faulty.misbehave` with shard 1 of 4 misbehaving as `how`, one worker
/// (so the slot must be reused after the bad shard); return the rows.
fn misbehave(how: &str, limits: &str) -> Vec<Vec<String>> {
    let dir = faulty_config(&format!("shards = 4\nbad = 1\nhow = \"{how}\""), 1, limits);
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{how}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("4 shards (3 ok, 1 failed)"),
        "{how}: {}",
        stderr(&o)
    );
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(header, ["shard", "square", "random", "error"], "{how}");
    for (i, row) in rows.iter().enumerate() {
        if i != 1 {
            assert_eq!(
                (row[1].as_str(), row[3].as_str()),
                ((i * i).to_string().as_str(), ""),
                "{how}: good shard {i}"
            );
        }
    }
    rows
}

fn error_of(how: &str, limits: &str) -> String {
    misbehave(how, limits)[1][3].clone()
}

#[test]
fn an_endless_loop_stops_at_the_timeout() {
    let e = error_of("spin", "timeout = \"1s\"");
    assert!(e.starts_with("timeout: "), "{e}");
}

#[test]
fn unbounded_memory_stops_at_the_memory_limit() {
    let e = error_of("alloc", "memory = \"64M\"");
    assert!(e.starts_with("out-of-memory: "), "{e}");
}

#[test]
fn a_stack_overflow_is_a_trap() {
    // A Rust guest keeps its stack in linear memory: overflowing it shows as an
    // out-of-bounds access in the recursing function.
    let e = error_of("stack", "");
    assert!(e.starts_with("trap: ") && e.contains("deep"), "{e}");
}

#[test]
fn endless_rows_hit_the_output_limit() {
    let e = error_of("rows", "output_size = \"1M\"");
    assert!(
        e.starts_with("limit-exceeded: ") && e.contains("output_size"),
        "{e}"
    );
}

#[test]
fn an_enormous_cell_hits_the_output_limit() {
    let e = error_of("cell", "output_size = \"1M\"\nmemory = \"256M\"");
    assert!(
        e.starts_with("limit-exceeded: ") && e.contains("output_size"),
        "{e}"
    );
}

#[test]
fn log_spam_hits_the_log_limit() {
    let e = error_of("log", "log_size = \"64K\"");
    assert!(
        e.starts_with("limit-exceeded: ") && e.contains("log_size"),
        "{e}"
    );
}

#[test]
fn a_malformed_row_is_a_guest_error() {
    let e = error_of("badrow", "");
    assert!(
        e.starts_with("guest-error: malformed row 1: a cell has an empty column name"),
        "{e}"
    );
}

#[test]
fn the_sandbox_denies_everything_but_reading_the_data_dir() {
    let dir = faulty_config("shards = 2\nbad = 0\nhow = \"probe\"", 1, "");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("inside.txt"), "inside").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "host secret").unwrap();
    std::os::unix::fs::symlink("../secret.txt", data.join("escape")).unwrap();
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("seed = 7", "seed = 7\ndata = \"data\"");
    std::fs::write(&path, text).unwrap();

    let o = engine()
        .args([
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .env("AWS_SECRET_ACCESS_KEY", "host-secret-value")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    let probe: std::collections::HashMap<&str, &str> = header
        .iter()
        .map(String::as_str)
        .zip(rows[0].iter().map(String::as_str))
        .collect();
    assert_eq!(probe["read_data"], "ALLOWED: \"inside\"");
    for key in [
        "read_parent",
        "read_absolute",
        "read_proc_environ",
        "read_symlink",
        "write_data",
        "overwrite_data",
        "delete_data",
        "mkdir_data",
        "env",
        "tcp",
        "dns",
    ] {
        assert!(probe[key].starts_with("denied"), "{key}: {}", probe[key]);
    }
    let all = std::fs::read_to_string(dir.path().join("out/result.csv")).unwrap();
    assert!(
        !all.contains("host-secret-value") && !all.contains("host secret"),
        "nothing leaked: {all}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("inside.txt")).unwrap(),
        "inside",
        "data dir unchanged"
    );
    assert!(!data.join("new.txt").exists() && !data.join("d").exists());
}

fn plan_error(args: &str, limits: &str) -> String {
    let dir = faulty_config(args, 1, limits);
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
    assert!(!dir.path().join("out/result.csv").exists(), "no output");
    stderr(&o)
}

#[test]
fn a_panicking_plan_is_reported() {
    let e = plan_error("plan = \"panic\"", "");
    assert!(
        e.contains("planning `faulty.misbehave` failed: trap:")
            && e.contains("plan asked to panic"),
        "{e}"
    );
}

#[test]
fn an_empty_plan_is_reported() {
    let e = plan_error("plan = \"empty\"", "");
    assert!(e.contains("planned no shards"), "{e}");
}

#[test]
fn ten_million_shards_are_refused_without_hurting_the_host() {
    // Ten million collected into one list in the guest: refused at the
    // boundary (the guest's memory).
    let e = plan_error("shards = 10000000", "");
    assert!(
        e.contains("planning `faulty.misbehave` failed: out-of-memory")
            || e.contains("planning `faulty.misbehave` failed: limit-exceeded"),
        "{e}"
    );
    // Made as the engine takes them: refused as soon as the plan passes
    // `limits.max_shards` (a million by default), with nothing held whole.
    let e = plan_error("shards = 10000000\nplan = \"lazy\"", "");
    assert!(
        e.contains(
            "`faulty.misbehave` planned more than 1000000 shards, the run's `limits.max_shards`"
        ),
        "{e}"
    );
    // A plan that fits but is larger than the run allows.
    let e = plan_error("shards = 200000", "memory = \"1G\"\nmax_shards = 100000");
    assert!(
        e.contains("planned more than 100000 shards, the run's `limits.max_shards`"),
        "{e}"
    );
}

/// `data/a/x` and `data/b/y` beside the config in `dir`, as its `run.data`.
fn with_data(dir: tempfile::TempDir) -> tempfile::TempDir {
    let data = dir.path().join("data");
    for (folder, file, text) in [("a", "x", "in a"), ("b", "y", "in b")] {
        std::fs::create_dir_all(data.join(folder)).unwrap();
        std::fs::write(data.join(folder).join(file), text).unwrap();
    }
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("seed = 7", "seed = 7\ndata = \"data\"");
    std::fs::write(&path, text).unwrap();
    dir
}

#[test]
fn a_shard_reads_only_the_data_directories_it_declares() {
    // Every shard declares `reads = ["a"]`: its sandbox mounts `/data/a` alone.
    let dir = with_data(faulty_config(
        "shards = 3\nreads = [\"a\"]\nread = [\"/data/a/x\", \"/data/b/y\", \"/data/a/../b/y\"]",
        1,
        "",
    ));
    let o = run_command(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 shards (1 ok, 2 failed)"),
        "{}",
        stderr(&o)
    );
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!(header, ["shard", "square", "random", "read", "error"]);
    assert_eq!((rows[0][3].as_str(), rows[0][4].as_str()), ("in a", ""));
    assert!(
        rows[1][4].starts_with("guest-error: cannot read `/data/b/y`: No such file or directory"),
        "{:?}",
        rows[1]
    );
    // Nor does a path climbing out of `/data/a` reach `b`.
    assert!(
        rows[2][4].starts_with("guest-error: cannot read `/data/a/../b/y`: "),
        "{:?}",
        rows[2]
    );
    let all = std::fs::read_to_string(dir.path().join("out/result.csv")).unwrap();
    assert!(!all.contains("in b"), "{all}");

    // Without `reads`, the same shards see all of `/data`.
    let dir = with_data(faulty_config(
        "shards = 2\nread = [\"/data/a/x\", \"/data/b/y\"]",
        1,
        "",
    ));
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!((rows[0][3].as_str(), rows[1][3].as_str()), ("in a", "in b"));
}

#[test]
fn a_read_that_is_not_a_data_directory_is_refused_at_plan_time() {
    let refused = |reads: &str, data: bool| {
        let dir = faulty_config(&format!("shards = 2\nreads = {reads}"), 1, "");
        let dir = if data { with_data(dir) } else { dir };
        let o = run_command(dir.path()).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!dir.path().join("out/result.csv").exists(), "nothing ran");
        let data = std::fs::canonicalize(dir.path()).unwrap().join("data");
        (stderr(&o), data)
    };
    let (e, data) = refused("[\"a\", \"Foo\"]", true);
    assert!(
        e.contains(&format!(
            "error: `faulty.misbehave` planned shard (shard=0) reading `Foo`, which is not a \
             directory of `run.data` ({})",
            data.display()
        )),
        "{e}"
    );
    let (e, _) = refused("[\"a/x\"]", true);
    assert!(
        e.contains("reading `a/x`, which is not a directory of `run.data`"),
        "{e}"
    );
    let (e, _) = refused("[\"../b\"]", true);
    assert!(
        e.contains("reading `../b`, which is not a data directory path"),
        "{e}"
    );
    let (e, _) = refused("[\"a\"]", false);
    assert!(
        e.contains("reading `a`, but the run has no data (`run.data` is not set)"),
        "{e}"
    );
}
