//! Helpers: run the real `engine` binary, write configs, read CSVs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The test guests (`tests/guests/*`), built for wasm.
pub fn guests_dir() -> PathBuf {
    PathBuf::from(env!("ENGINE_TEST_GUESTS_DIR"))
}

/// `engine` with a shared compile cache and no plugin path from the caller.
pub fn engine() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine-cli"));
    cmd.env("ENGINE_CACHE_DIR", root().join("target/test-cache"))
        .env_remove("ENGINE_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// `engine run config.toml` in `dir`, with the test guests, to spawn.
pub fn run_command(dir: &Path) -> Command {
    let mut cmd = engine();
    cmd.args([
        "run",
        "config.toml",
        "--plugins",
        guests_dir().to_str().unwrap(),
    ])
    .current_dir(dir);
    cmd
}

/// Run `engine ARGS…` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    engine()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot start the engine binary")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temporary directory with `config.toml` holding `text`.
pub fn config(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.toml"), text).expect("write config");
    dir
}

/// A config calling `faulty.misbehave` with the given extra args and workers;
/// `extra` holds more `[limits]` lines (memory 64M and timeout 5s unless given).
pub fn faulty_config(args: &str, workers: usize, extra: &str) -> tempfile::TempDir {
    let mut limits = String::new();
    if !extra.contains("memory =") {
        limits.push_str("memory = \"64M\"\n");
    }
    if !extra.contains("timeout =") {
        limits.push_str("timeout = \"5s\"\n");
    }
    config(&format!(
        "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\n{args}\n\
         [cluster]\nworkers = {workers}\n[limits]\n{limits}{extra}\n\
         [output]\npath = \"out/result.csv\"\n"
    ))
}

/// Parse a CSV file into a header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let header = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// A `faulty.misbehave` config on the `processes` backend with a directory store.
pub fn processes_config(args: &str, workers: usize, lease: &str) -> tempfile::TempDir {
    faulty_config(args, workers, "").tap_config(&format!(
        "backend = \"processes\"\nlease = \"{lease}\"\nstore = \"store\"\n"
    ))
}

pub trait TapConfig {
    fn tap_config(self, cluster_lines: &str) -> Self;
}

impl TapConfig for tempfile::TempDir {
    /// Add lines to the `[cluster]` table of the config in this directory.
    fn tap_config(self, cluster_lines: &str) -> Self {
        let path = self.path().join("config.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[cluster]\n", &format!("[cluster]\n{cluster_lines}"));
        std::fs::write(&path, text).unwrap();
        self
    }
}

/// Pids of `engine worker` processes using the store under `dir`.
pub fn worker_pids(dir: &Path) -> Vec<i32> {
    let store = dir.join("store").display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "worker") && args.iter().any(|a| a.starts_with(&store)) {
            pids.push(pid);
        }
    }
    pids
}

pub fn sigkill(pid: i32) {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -KILL {pid}");
}

/// A program of the test venv (`scripts/test` makes it: moto, boto3).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("ENGINE_TEST_VENV")
        .map_or_else(|| root().join("target/venv-test"), PathBuf::from);
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with scripts/test, which installs moto and boto3",
        path.display()
    );
    path
}

/// A moto S3 server on `host` and a free port, logging to `log`, that dies
/// with the test binary: started from a thread that lives as long as the
/// binary, with PR_SET_PDEATHSIG (Linux kills the server when that thread
/// ends). Returns once it accepts connections at `reach` (`host`, or where
/// others reach it).
pub fn spawn_moto(host: &str, reach: &str, log: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, log_file) = (host.to_owned(), log.to_owned());
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log_file).expect("the moto log");
        let mut cmd = Command::new(venv_bin("moto_server"));
        cmd.args(["-H", &host, "-p", &port.to_string()])
            .stdout(out.try_clone().expect("the moto log"))
            .stderr(out);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx
        .recv()
        .expect("the moto thread")
        .expect("start moto_server");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect((reach, port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "moto_server did not start (log: {})",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (child, port)
}
