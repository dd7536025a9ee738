//! S3 through object_store, against a real S3-protocol server on loopback
//! (moto_server, installed by scripts/test), checked with an independent
//! client (boto3).

use crate::util::*;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Moto {
    port: u16,
    _child: ChildGuard,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// One moto server for the whole test binary; AWS_* point at it.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let log = root().join(format!("target/moto-s3-{}.log", std::process::id()));
        let (child, port) = spawn_moto("127.0.0.1", "127.0.0.1", &log);
        // SAFETY: set once, before any S3 test reads them; other tests ignore AWS_*.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        }
        Moto {
            port,
            _child: ChildGuard(child),
        }
    })
}

/// Run python with boto3 against moto; returns stdout.
fn boto3(script: &str) -> String {
    boto3_at(moto().port, script)
}

/// Run python with boto3 against the moto server on `port`; returns stdout.
fn boto3_at(port: u16, script: &str) -> String {
    let o = Command::new(venv_bin("python"))
        .args(["-c", &format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{script}"
        )])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn bucket(name: &str) -> String {
    boto3(&format!("s3.create_bucket(Bucket='{name}')"));
    name.to_owned()
}

#[test]
fn csv_output_to_s3() {
    let b = bucket("results-local");
    let local = faulty_config("shards = 6", 2, "");
    let o = run_in(
        local.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = faulty_config("shards = 6", 2, "");
    let url = format!("s3://{b}/sweeps/result.csv");
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--output",
            &url,
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let body = boto3(&format!(
        "import sys; sys.stdout.write(s3.get_object(Bucket='{b}', Key='sweeps/result.csv')['Body'].read().decode())"
    ));
    assert_eq!(
        body,
        std::fs::read_to_string(local.path().join("out/result.csv")).unwrap()
    );
}

#[test]
fn three_worker_processes_coordinate_through_s3() {
    let b = bucket("engine-store");
    let dir = faulty_config("shards = 9\nsleep_ms = 50", 3, "");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[cluster]\n",
        &format!(
            "[cluster]\nbackend = \"processes\"\nstore = \"s3://{b}/runs-prefix\"\nlease = \"5s\"\n"
        ),
    );
    // The reference runner's output form: path + bucket.
    let text = text.replace(
        "path = \"out/result.csv\"",
        &format!("path = \"out/result.csv\"\nbucket = \"{b}\""),
    );
    std::fs::write(&path, text).unwrap();
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
    let listing = boto3(&format!(
        "r = s3.list_objects_v2(Bucket='{b}', Prefix='runs-prefix/')\nprint('\\n'.join(o['Key'] for o in r.get('Contents', [])))"
    ));
    let parts = listing.lines().filter(|k| k.contains("/parts/")).count();
    let claims = listing.lines().filter(|k| k.contains("/claims/")).count();
    assert_eq!(parts, 9, "one part per shard: {listing}");
    assert_eq!(claims, 9, "one claim per shard: {listing}");
    let csv = boto3(&format!(
        "import sys; sys.stdout.write(s3.get_object(Bucket='{b}', Key='out/result.csv')['Body'].read().decode())"
    ));
    assert_eq!(csv.lines().count(), 10, "{csv}");
}

#[test]
fn create_if_absent_is_honoured_by_the_server() {
    let b = bucket("conditional");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = engine::store::Location::parse(&format!("s3://{b}/x")).unwrap();
        let store = engine::store::RunStore::new(&base, None, "run");
        assert!(store.create("claims/00000000/0", "first").await.unwrap());
        assert!(
            !store.create("claims/00000000/0", "second").await.unwrap(),
            "second create must lose"
        );
        assert_eq!(
            store.get("claims/00000000/0").await.unwrap().unwrap(),
            "first"
        );
    });
}

/// A store that stalls mid-run (its server stopped with SIGSTOP for 45 s,
/// then continued) costs the run time, not the run: the orchestrator and the
/// workers wait it out, no worker process exits, and every shard's row is in
/// the output exactly once.
#[test]
fn a_store_stalled_mid_run_costs_time_not_the_run() {
    // A moto of this test's own: stopping the shared one would stall the others.
    let log = root().join(format!("target/moto-s3-stall-{}.log", std::process::id()));
    let (child, port) = spawn_moto("127.0.0.1", "127.0.0.1", &log);
    let pid = child.id() as i32;
    let _moto = ChildGuard(child);
    boto3_at(port, "s3.create_bucket(Bucket='stalled')");

    let args = "shards = 100\nsleep_ms = 50";
    let local = faulty_config(args, 2, "");
    let o = run_command(local.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let dir = faulty_config(args, 2, "")
        .tap_config("backend = \"processes\"\nlease = \"5s\"\nstore = \"s3://stalled/store\"\n");
    let err_path = dir.path().join("stderr.txt");
    let mut engine = run_command(dir.path());
    engine
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        // A request times out after 2 s instead of 30: the S3 client's own
        // retries (10) then run out within the stall, as they do with the
        // default timeout in a stall of over three minutes.
        .env("AWS_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let run = ChildGuard(engine.spawn().expect("cannot start the engine binary"));
    let run_stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();

    // Once some shards are finished (and most are not), stall the store.
    let parts = boto3_at(
        port,
        "import time\n\
         deadline = time.time() + 60\n\
         while True:\n\
         \x20   r = s3.list_objects_v2(Bucket='stalled', Prefix='store/')\n\
         \x20   n = sum('/parts/' in o['Key'] for o in r.get('Contents', []))\n\
         \x20   if n >= 10 or time.time() > deadline: break\n\
         \x20   time.sleep(0.2)\n\
         print(n)",
    );
    let parts: usize = parts.trim().parse().unwrap();
    assert!(parts >= 10, "no parts after a minute: {}", run_stderr());
    assert!(parts < 60, "the run went too fast to stall it mid-run");
    // SAFETY: plain signals to the moto server this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_secs(45));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    // A guard against a hang, not a timing assertion: far past any backoff.
    let mut run = run;
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "the run did not finish within 5 minutes of the store's return: {}",
            run_stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = run_stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("retrying for up to"),
        "the stall went unnoticed: {err}"
    );
    assert!(
        !err.contains("exited with") && !err.contains("restarting"),
        "a worker process exited during the stall: {err}"
    );
    assert_eq!(
        read_csv(&dir.path().join("out/result.csv")),
        read_csv(&local.path().join("out/result.csv")),
        "{err}"
    );
}

#[test]
fn worker_processes_reuse_and_keep_cells_in_an_s3_cache() {
    let b = bucket("engine-cache");
    let dir = faulty_config("shards = 6", 2, "");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[cluster]\n",
        &format!("[cluster]\nbackend = \"processes\"\nstore = \"s3://{b}/p\"\nlease = \"5s\"\n"),
    );
    std::fs::write(&path, &text).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Three more shards: the first six are the same cells.
    std::fs::write(&path, text.replace("shards = 6", "shards = 9")).unwrap();
    let o = run_command(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("6 of 9 cells reused from the cache"),
        "{}",
        stderr(&o)
    );
    // Counted in the store, with another client: the workers kept every
    // cell they computed, and of the second run's claims only the three
    // new shards' were made by a worker (the others mark cached parts).
    let listing = boto3(&format!(
        "r = s3.list_objects_v2(Bucket='{b}', Prefix='p/')\nprint('\\n'.join(o['Key'] for o in r.get('Contents', [])))"
    ));
    let cells = listing
        .lines()
        .filter(|k| k.starts_with("p/cache/") && k.ends_with(".cell"))
        .count();
    assert_eq!(cells, 9, "{listing}");
    let holders = boto3(&format!(
        "import json\nr = s3.list_objects_v2(Bucket='{b}', Prefix='p/runs/')\n\
         keys = [o['Key'] for o in r.get('Contents', []) if '/claims/' in o['Key']]\n\
         runs = sorted({{k.split('/')[2] for k in keys}})\n\
         for k in keys:\n    body = json.loads(s3.get_object(Bucket='{b}', Key=k)['Body'].read())\n    \
         print(runs.index(k.split('/')[2]), body['process'] == 'cell-cache')"
    ));
    let count = |line: &str| holders.lines().filter(|l| *l == line).count();
    // (Which run is which does not matter: only the second had cached cells.)
    assert_eq!(count("0 True") + count("1 True"), 6, "{holders}");
    assert_eq!(
        count("0 False") + count("1 False"),
        6 + 3,
        "workers claimed 6 shards, then 3: {holders}"
    );
}
