//! The kubernetes backend on a real cluster (`tests/all/cluster.rs`): a real
//! API server, scheduler and controllers, worker pods as podman containers
//! running the `localhost/engine:dev` image, the store in S3 (moto).
//!
//! Every test has a namespace of its own and the engine talks as that
//! namespace's `engine` ServiceAccount (deploy/rbac.yaml). The tests run one at
//! a time (the node has two cores).

use crate::cluster::{IMAGE, Namespace, Running, last_states, most_alive, phases, wait_until};
use crate::util::{self, guests_dir, read_csv};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const RUN_LIMIT: Duration = Duration::from_secs(240);
/// The faulty guest's limits in these runs (a pod is slower than a thread).
const LIMITS: &str = "memory = \"64M\"\ntimeout = \"30s\"";
const SMALL: &str = "{ cpu = \"250m\", memory = \"256Mi\" }";

/// The `[cluster]` lines of a run on worker pods in `ns`.
fn on_pods(ns: &Namespace, workers: &str, image: &str, resources: &str) -> String {
    format!(
        "backend = \"kubernetes\"\nworkers = {workers}\nstore = \"{}\"\nlease = \"5s\"\n\
         [cluster.worker_config]\nimage = \"{image}\"\nresources = {resources}\n",
        ns.s3("store")
    )
}

/// A `faulty.misbehave` config (the test guest) with `[cluster]` lines.
fn faulty(args: &str, cluster: &str, limits: &str, output: &str) -> tempfile::TempDir {
    util::config(&format!(
        "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\n{args}\n\
         [cluster]\n{cluster}[limits]\n{limits}\n[output]\npath = \"{output}\"\n"
    ))
}

/// DeepEcho's two baselines on three small datasets of plugins/deepecho/data.
fn deepecho(cluster: &str, output: &str) -> tempfile::TempDir {
    util::config(&format!(
        "[run]\nfunction = \"deepecho.benchmark.run_benchmark\"\ndata = \"{}\"\nseed = 3\n\
         [run.args]\ndatasets = [\"PickupGestureWiimoteZ\", \"Tecator\", \"Covid3Month\"]\n\
         models = [\"RealDataBaseline\", \"UniformBaseline\"]\n\
         metrics = [\"rf_detection_score\", \"sdmetrics_score\"]\nmax_entities = 20\n\
         [cluster]\n{cluster}[output]\npath = \"{output}\"\n",
        util::root().join("plugins/deepecho/data").display()
    ))
}

fn guests() -> String {
    guests_dir().display().to_string()
}

/// `engine run config.toml --plugins <test guests>` in `dir`, as `ns`'s engine.
fn run(ns: &Namespace, dir: &Path, env: &[(&str, &str)]) -> Running {
    Running::spawn(
        ns.engine()
            .args(["run", "config.toml", "--plugins", &guests()])
            .envs(env.iter().copied())
            .current_dir(dir),
    )
}

/// The same faulty run on the local backend: the reference table.
fn local_faulty(args: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let dir = faulty(args, "workers = 2\n", LIMITS, "out/result.csv");
    let o = util::run_in(dir.path(), &["run", "config.toml", "--plugins", &guests()]);
    assert!(
        o.status.code().is_some_and(|c| c < 2),
        "{}",
        util::stderr(&o)
    );
    read_csv(&dir.path().join("out/result.csv"))
}

/// A CSV's header and rows without its timings (columns ending in `_time`).
fn without_timings(csv_text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !header[i].ends_with("_time"))
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            keep.iter().map(|&i| r[i].to_owned()).collect()
        })
        .collect();
    (keep.iter().map(|&i| header[i].clone()).collect(), rows)
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The reference table: the deepecho config on the local backend.
fn local_deepecho() -> String {
    let dir = deepecho("workers = 2\n", "out/results.csv");
    let o = util::run_in(dir.path(), &["run", "config.toml"]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    text(&dir.path().join("out/results.csv"))
}

/// Pods of the run that are workers (not an orchestrator).
fn workers(events: &[(String, Value)]) -> std::collections::BTreeMap<String, Value> {
    last_states(events)
        .into_iter()
        .filter(|(_, p)| p["metadata"]["labels"]["app.kubernetes.io/component"] == "worker")
        .collect()
}

fn error_column(header: &[String]) -> usize {
    header
        .iter()
        .position(|h| h == "error")
        .expect("an error column")
}

#[test]
fn deepecho_on_worker_pods_gives_the_local_table() {
    let reference = local_deepecho();
    let ns = Namespace::new("deepecho");
    let dir = deepecho(
        &on_pods(
            &ns,
            "{ minimum = 1, maximum = 3 }",
            IMAGE,
            "{ cpu = \"500m\", memory = \"512Mi\" }",
        ),
        "out/results.csv",
    );
    let watch = ns.watch_pods();
    let out = run(&ns, dir.path(), &[]).wait(RUN_LIMIT);
    let events = watch.stop();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let got = text(&dir.path().join("out/results.csv"));
    assert_eq!(without_timings(&got), without_timings(&reference));
    assert_eq!(without_timings(&got).1.len(), 6);
    let pods = workers(&events);
    assert!(!pods.is_empty(), "no worker pod was seen");
    let most = most_alive(&events);
    assert!(
        (1..=3).contains(&most),
        "{most} pods alive at once (maximum = 3)"
    );
    ns.assert_clean("a successful run");
}

#[test]
fn worker_pods_scale_within_bounds_and_carry_resources_labels_and_owner() {
    let args = "shards = 12\nsleep_ms = 1500";
    let reference = local_faulty(args);
    let ns = Namespace::new("workers");
    let dir = faulty(
        args,
        &on_pods(&ns, "{ minimum = 1, maximum = 3 }", IMAGE, SMALL),
        LIMITS,
        "out/result.csv",
    );
    let watch = ns.watch_pods();
    let mut engine = run(&ns, dir.path(), &[]);
    // The run's owner ConfigMap and store Secret, while it goes.
    let (run_id, owner, secret) = wait_until(
        "the run's ConfigMap and Secret",
        Duration::from_secs(120),
        || {
            assert!(
                engine.is_running(),
                "the run ended before its objects were seen"
            );
            let pod = ns.pods().into_iter().next()?;
            let run_id = pod["metadata"]["labels"]["engine.dev/run"]
                .as_str()?
                .to_owned();
            let owner = ns.kubectl(&[
                "get",
                "configmap",
                &format!("engine-{run_id}"),
                "-o",
                "json",
            ]);
            let secret = ns.kubectl(&[
                "get",
                "secret",
                &format!("engine-{run_id}-store"),
                "-o",
                "json",
            ]);
            Some((
                run_id,
                serde_json::from_slice::<Value>(&owner.stdout).ok()?,
                serde_json::from_slice::<Value>(&secret.stdout).ok()?,
            ))
        },
    );
    let out = engine.wait(RUN_LIMIT);
    let events = watch.stop();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(read_csv(&dir.path().join("out/result.csv")), reference);

    // The Secret holds the store's settings, owned by the ConfigMap.
    let owner_uid = owner["metadata"]["uid"].as_str().expect("uid");
    let keys: Vec<&str> = secret["data"]
        .as_object()
        .expect("data")
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    ] {
        assert!(keys.contains(&k), "{k} not in the Secret: {keys:?}");
    }
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"], owner_uid,
        "{secret:#}"
    );

    // No worker lost a claim (deleted or killed while busy): each shard was
    // claimed once, attempt 0.
    let claims: Vec<String> = ns
        .s3_keys("store/")
        .into_iter()
        .filter(|k| k.contains("/claims/"))
        .collect();
    let records: Vec<String> = claims
        .iter()
        .map(|k| format!("{k}: {}", ns.s3_text(k).unwrap_or_default()))
        .collect();
    assert_eq!(claims.len(), 12, "{records:#?}");
    assert!(claims.iter().all(|k| k.ends_with("/0")), "{records:#?}");

    let pods = workers(&events);
    let most = most_alive(&events);
    assert_eq!(most, 3, "the pool scales up to `maximum` and never past it");
    let mut roles = Vec::new();
    for (name, pod) in &pods {
        assert!(name.starts_with(&format!("engine-{run_id}-")), "{name}");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "engine", "{name}");
        assert_eq!(labels["app.kubernetes.io/component"], "worker", "{name}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "engine", "{name}");
        assert_eq!(labels["engine.dev/run"], run_id.as_str(), "{name}");
        roles.push(labels["engine.dev/role"].clone());
        let owners = pod["metadata"]["ownerReferences"]
            .as_array()
            .expect("ownerReferences");
        assert_eq!(owners.len(), 1, "{name}: {owners:?}");
        assert_eq!(owners[0]["kind"], "ConfigMap", "{name}");
        assert_eq!(owners[0]["name"], format!("engine-{run_id}"), "{name}");
        assert_eq!(owners[0]["uid"], owner_uid, "{name}");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], IMAGE, "{name}");
        for kind in ["requests", "limits"] {
            assert_eq!(
                c["resources"][kind],
                serde_json::json!({ "cpu": "250m", "memory": "256Mi" }),
                "{name} {kind}"
            );
        }
        assert_eq!(
            c["envFrom"][0]["secretRef"]["name"],
            format!("engine-{run_id}-store"),
            "{name}"
        );
        assert!(
            !c["env"].to_string().contains("AWS_"),
            "{name}: store credentials in plain env"
        );
        // Pods end by themselves, never deleted while busy.
        let seen = phases(&events, name);
        assert!(
            !seen.iter().any(|p| p == "Failed"),
            "{name} failed: {seen:?}"
        );
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(code) = status["state"]["terminated"]["exitCode"].as_i64() {
                assert_eq!(code, 0, "{name}: {status:#}");
            }
        }
    }
    ns.assert_clean("a successful run");
    assert!(
        roles.iter().all(|r| r == "worker"),
        "label engine.dev/role=worker on every worker pod: {roles:?}"
    );
}

#[test]
fn a_run_with_a_failed_shard_leaves_nothing_behind() {
    let args = "shards = 4\nbad = 1\nhow = \"trap\"";
    let reference = local_faulty(args);
    let ns = Namespace::new("failed-shard");
    let dir = faulty(
        args,
        &on_pods(&ns, "2", IMAGE, SMALL),
        LIMITS,
        "out/result.csv",
    );
    let out = run(&ns, dir.path(), &[]).wait(RUN_LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!((header.clone(), rows.clone()), reference);
    assert!(
        rows[1][error_column(&header)].starts_with("trap"),
        "{rows:?}"
    );
    ns.assert_clean("a run with a failed shard");
}

#[test]
fn ctrl_c_and_sigterm_leave_nothing_behind() {
    let ns = Namespace::new("signals");
    for signal in ["INT", "TERM"] {
        let cluster = on_pods(&ns, "{ minimum = 2, maximum = 2 }", IMAGE, SMALL)
            .replace(&ns.s3("store"), &ns.s3(&format!("store-{signal}")));
        let dir = faulty(
            "shards = 12\nsleep_ms = 4000",
            &cluster,
            LIMITS,
            "out/result.csv",
        );
        let mut engine = run(&ns, dir.path(), &[]);
        wait_until("a Running worker pod", Duration::from_secs(120), || {
            assert!(
                engine.is_running(),
                "the run ended before it was interrupted"
            );
            ns.pods()
                .iter()
                .any(|p| p["status"]["phase"] == "Running")
                .then_some(())
        });
        std::thread::sleep(Duration::from_secs(1));
        let sent = std::time::Instant::now();
        engine.signal(signal);
        let out = engine.wait(Duration::from_secs(60));
        let exited = sent.elapsed();
        assert!(!out.status.success(), "SIG{signal}: {}", out.stderr);
        assert!(
            !dir.path().join("out/result.csv").exists(),
            "SIG{signal}: an output"
        );
        if signal == "INT" {
            assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
        }
        ns.assert_clean(&format!("SIG{signal} to `engine run`"));
        eprintln!(
            "SIG{signal}: exited after {exited:.1?}, nothing left after {:.1?}",
            sent.elapsed()
        );
    }
}

/// The `engine-store` Secret an operator creates for orchestrators run by
/// `engine submit` (deploy/README.md), here with moto's settings.
fn store_secret(ns: &Namespace) {
    let mut cmd = ns.admin();
    cmd.args(["create", "secret", "generic", "engine-store"]);
    for (k, v) in &crate::cluster::moto().env {
        cmd.arg(format!("--from-literal={k}={v}"));
    }
    crate::cluster::checked(&mut cmd);
    crate::cluster::checked(ns.admin().args([
        "label",
        "secret",
        "engine-store",
        "engine.test/keep=1",
    ]));
}

/// `engine submit config.toml` in `dir`; the Job's name.
fn submit(ns: &Namespace, dir: &Path) -> String {
    let out = Running::spawn(
        ns.engine()
            .args(["submit", "config.toml", "--plugins", &guests()])
            .current_dir(dir),
    )
    .wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let job = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("job/")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job in: {}", out.stdout))
        .to_owned();
    assert!(
        out.stdout.contains(&format!("namespace {}", ns.name)),
        "{}",
        out.stdout
    );
    job
}

/// Wait for the Job to succeed (panics with its logs if it fails).
fn job_succeeds(ns: &Namespace, job: &str) {
    let logs = || util::stdout(&ns.kubectl(&["logs", &format!("job/{job}"), "--tail=40"]));
    wait_until(&format!("job/{job} to succeed"), RUN_LIMIT, || {
        let j = ns.get(&["job", job]);
        let failed = j["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Failed" && c["status"] == "True");
        assert!(
            !failed,
            "job/{job} failed: {:#}\nlogs:\n{}",
            j["status"],
            logs()
        );
        (j["status"]["succeeded"].as_i64() == Some(1)).then_some(())
    });
}

#[test]
fn a_submitted_run_writes_the_local_table_to_s3() {
    let reference = local_deepecho();
    let ns = Namespace::new("submit");
    store_secret(&ns);
    let cluster = on_pods(
        &ns,
        "{ minimum = 1, maximum = 2 }",
        IMAGE,
        "{ cpu = \"500m\", memory = \"512Mi\" }",
    );

    // An orchestrator in a pod cannot write to this machine's disk.
    let local = deepecho(&cluster, "out/results.csv");
    let out = Running::spawn(
        ns.engine()
            .args(["submit", "config.toml"])
            .current_dir(local.path()),
    )
    .wait(Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a local output.path is refused: {}",
        out.stderr
    );
    assert!(out.stderr.contains("output.path"), "{}", out.stderr);
    assert!(ns.items("jobs").is_empty(), "nothing is created");

    // A relative `run.data` and credentials in the config: the data goes to
    // the store, the credentials to a Secret, neither into the ConfigMap.
    let dir = deepecho(&cluster, &ns.s3("out/results.csv"));
    let data = util::root().join("plugins/deepecho/data");
    std::os::unix::fs::symlink(&data, dir.path().join("data")).unwrap();
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            &format!("data = \"{}\"", data.display()),
            "data = \"data\"",
            1,
        )
        .replacen(
            "[output]\n",
            "[output]\nkey = \"test\"\nsecret_key = \"submit-secret-2f9c\"\n",
            1,
        );
    assert!(text.contains("data = \"data\""), "{text}");
    std::fs::write(&config, text).unwrap();
    let job = submit(&ns, dir.path());
    let uploaded = ns.get(&["configmap", &job])["data"]["config.toml"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !uploaded.contains("submit-secret-2f9c") && !uploaded.contains("secret_key"),
        "a credential in the ConfigMap: {uploaded}"
    );
    assert!(
        uploaded.contains(&format!("data = \"{}", ns.s3("store/uploads/data-"))),
        "run.data is not the uploaded copy: {uploaded}"
    );
    job_succeeds(&ns, &job);
    let got = ns
        .s3_text("out/results.csv")
        .expect("out/results.csv in the bucket");
    assert_eq!(without_timings(&got), without_timings(&reference));
    ns.assert_clean("a submitted run");
}

#[test]
fn the_garbage_collector_removes_the_workers_of_a_deleted_orchestrator() {
    let ns = Namespace::new("gc");
    store_secret(&ns);
    let dir = faulty(
        "shards = 40\nsleep_ms = 3000",
        &on_pods(&ns, "{ minimum = 2, maximum = 2 }", IMAGE, SMALL),
        LIMITS,
        &ns.s3("out/result.csv"),
    );
    let job = submit(&ns, dir.path());
    let workers = || {
        ns.pods()
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "worker")
            .collect::<Vec<_>>()
    };
    let run_id = wait_until("a Running worker pod", Duration::from_secs(120), || {
        let running = workers()
            .into_iter()
            .find(|p| p["status"]["phase"] == "Running")?;
        Some(
            running["metadata"]["labels"]["engine.dev/run"]
                .as_str()?
                .to_owned(),
        )
    });
    let orchestrator = ns
        .pods()
        .into_iter()
        .find(|p| p["metadata"]["labels"]["job-name"] == job.as_str())
        .expect("the Job's pod");
    let orchestrator = orchestrator["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = ns.get(&["configmap", &format!("engine-{run_id}")]);
    assert_eq!(
        owner["metadata"]["ownerReferences"][0]["kind"], "Pod",
        "{owner:#}"
    );
    assert_eq!(
        owner["metadata"]["ownerReferences"][0]["name"],
        orchestrator.as_str(),
        "{owner:#}"
    );

    // Gone at once, its token with it: only the garbage collector can clean up.
    crate::cluster::checked(ns.admin().args([
        "delete",
        "pod",
        &orchestrator,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]));
    wait_until(
        "the garbage collector to delete the workers",
        Duration::from_secs(90),
        || {
            let cm = ns.kubectl(&["get", "configmap", &format!("engine-{run_id}")]);
            (workers().is_empty() && !cm.status.success()).then_some(())
        },
    );
    ns.assert_clean("the orchestrator pod's deletion");
}

/// `rbac` (deploy/rbac.yaml) without `verb` in the rule for `resource`.
fn without_verb(rbac: &str, resource: &str, verb: &str) -> String {
    let mut in_rule = false;
    let mut removed = false;
    let lines: Vec<String> = rbac
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with("resources:") {
                in_rule = t.contains(&format!("\"{resource}\""));
            }
            if !(in_rule && t.starts_with("verbs:")) {
                return line.to_owned();
            }
            in_rule = false;
            let edited = line
                .replace(&format!("\"{verb}\", "), "")
                .replace(&format!(", \"{verb}\""), "");
            removed |= edited != line;
            edited
        })
        .collect();
    assert!(
        removed,
        "no `{verb}` on `{resource}` in deploy/rbac.yaml:\n{rbac}"
    );
    lines.join("\n")
}

#[test]
fn a_missing_verb_in_the_role_is_named() {
    let ns = Namespace::with_rbac("rbac", |rbac| without_verb(&rbac, "pods", "create"));
    let denied = ns.kubectl(&[
        "auth",
        "can-i",
        "create",
        "pods",
        &format!("--as=system:serviceaccount:{}:engine", ns.name),
    ]);
    assert_eq!(
        util::stdout(&denied).trim(),
        "no",
        "the edited Role still allows it"
    );
    let dir = faulty(
        "shards = 2",
        &on_pods(&ns, "1", IMAGE, SMALL),
        LIMITS,
        "out/result.csv",
    );
    let out = run(&ns, dir.path(), &[]).wait(RUN_LIMIT);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("refused to create pods"),
        "{}",
        out.stderr
    );
    ns.assert_clean("a refused pod");
}

#[test]
fn a_worker_no_node_can_hold_fails_with_the_schedulers_reason() {
    let ns = Namespace::new("unschedulable");
    let dir = faulty(
        "shards = 2",
        &on_pods(&ns, "1", IMAGE, "{ cpu = \"64\", memory = \"256Mi\" }"),
        LIMITS,
        "out/result.csv",
    );
    let out =
        run(&ns, dir.path(), &[("ENGINE_K8S_START_TIMEOUT", "5s")]).wait(Duration::from_secs(90));
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("Unschedulable"), "{}", out.stderr);
    assert!(out.stderr.contains("Insufficient cpu"), "{}", out.stderr);
    ns.assert_clean("an unschedulable pod");
}

#[test]
fn an_image_the_node_does_not_have_fails_the_run() {
    let ns = Namespace::new("image");
    let dir = faulty(
        "shards = 2",
        &on_pods(&ns, "1", "localhost/engine:not-built", SMALL),
        LIMITS,
        "out/result.csv",
    );
    let out =
        run(&ns, dir.path(), &[("ENGINE_K8S_START_TIMEOUT", "5s")]).wait(Duration::from_secs(90));
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("ErrImagePull") || out.stderr.contains("ImagePullBackOff"),
        "{}",
        out.stderr
    );
    ns.assert_clean("an image pull error");
}

#[test]
fn an_oom_killed_worker_loses_its_shard_and_the_run_completes() {
    // Shard 3 allocates up to the sandbox's 1G; the pod may use 160Mi: the
    // kernel kills the container first, each time the shard is offered again.
    let ns = Namespace::new("oom");
    let dir = faulty(
        "shards = 4\nbad = 3\nhow = \"alloc\"",
        &on_pods(
            &ns,
            "{ minimum = 1, maximum = 2 }",
            IMAGE,
            "{ cpu = \"500m\", memory = \"160Mi\" }",
        ),
        "memory = \"1G\"\ntimeout = \"60s\"",
        "out/result.csv",
    );
    let watch = ns.watch_pods();
    let out = run(&ns, dir.path(), &[]).wait(RUN_LIMIT);
    let events = watch.stop();
    assert_eq!(out.status.code(), Some(1), "a shard failed: {}", out.stderr);
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    let error = error_column(&header);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (i, row) in rows.iter().enumerate().take(3) {
        assert_eq!(row[error], "", "shard {i}: {row:?}");
    }
    assert!(rows[3][error].starts_with("crashed: "), "{:?}", rows[3]);
    let oom_killed = workers(&events)
        .values()
        .filter(|p| {
            p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
        })
        .count();
    assert!(
        oom_killed >= 3,
        "{oom_killed} pods OOMKilled (the shard is lost 3 times)"
    );
    assert!(out.stderr.contains("OOMKilled"), "{}", out.stderr);
    ns.assert_clean("OOM kills");
}

#[test]
fn a_pod_quota_caps_the_pool_and_the_run_completes() {
    let args = "shards = 8\nsleep_ms = 1500";
    let reference = local_faulty(args);
    let ns = Namespace::new("quota");
    ns.apply("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: pods\nspec:\n  hard:\n    pods: \"2\"\n");
    let dir = faulty(
        args,
        &on_pods(&ns, "{ minimum = 1, maximum = 4 }", IMAGE, SMALL),
        LIMITS,
        "out/result.csv",
    );
    let watch = ns.watch_pods();
    let out = run(&ns, dir.path(), &[]).wait(RUN_LIMIT);
    let events = watch.stop();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(read_csv(&dir.path().join("out/result.csv")), reference);
    assert_eq!(
        most_alive(&events),
        2,
        "the pool grows to the quota, no further"
    );
    ns.assert_clean("a run under a quota");
}

/// The same kind of run on any cluster, from `KUBECONFIG`: see deploy/README.md
/// ("Testing on your own cluster") for kind.
#[test]
#[ignore = "needs a cluster of your own, an image and an S3 store: see deploy/README.md"]
fn real_cluster() {
    let image = std::env::var("ENGINE_K8S_TEST_IMAGE").expect("ENGINE_K8S_TEST_IMAGE");
    let store = std::env::var("ENGINE_K8S_TEST_STORE").expect("ENGINE_K8S_TEST_STORE");
    let args = "shards = 8\nsleep_ms = 400";
    let dir = faulty(
        args,
        &format!(
            "backend = \"kubernetes\"\nworkers = {{ minimum = 1, maximum = 3 }}\nstore = \"{store}\"\n\
             [cluster.worker_config]\nimage = \"{image}\"\nresources = {SMALL}\n"
        ),
        LIMITS,
        "out/result.csv",
    );
    let out = util::engine()
        .args(["run", "config.toml", "--plugins", &guests()])
        .current_dir(dir.path())
        .output()
        .expect("start engine");
    assert_eq!(out.status.code(), Some(0), "{}", util::stderr(&out));
    assert_eq!(
        read_csv(&dir.path().join("out/result.csv")),
        local_faulty(args)
    );
    // Nothing of the run is left in the namespace.
    let o = Command::new("kubectl")
        .args([
            "get",
            "pods,secrets,configmaps",
            "-l",
            "app.kubernetes.io/managed-by=engine",
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl");
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{}",
        util::stdout(&o)
    );
}
