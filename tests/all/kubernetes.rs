//! The kubernetes backend against `tests/fixtures/k8s_api.py`, a fake API
//! server that runs each pod's command as a local process (so the workers are
//! the test CLI itself, and the store is a local directory).

use crate::util::{self, engine, guests_dir, read_csv, root, stderr, stdout};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A running fixture API server and a kubeconfig pointing at it.
struct Fixture {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn start(extra: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("python3")
            .arg(root().join("tests/fixtures/k8s_api.py"))
            .args([
                "--port",
                "0",
                "--pass-env",
                "ENGINE_CACHE_DIR",
                "--pass-env",
                "PATH",
                "--exit-with-parent",
            ])
            .args(["--node-resource", "nvidia.com/gpu=8"])
            .args(extra)
            .env("ENGINE_CACHE_DIR", root().join("target/test-cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start python3 tests/fixtures/k8s_api.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fixture output");
        let port: u16 = line
            .trim()
            .strip_prefix("listening http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected fixture output: {line:?}"));
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: fixture\n  user: {{}}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    \
             user: fixture\n    namespace: default\ncurrent-context: fixture\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Fixture { child, port, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `engine` talking to this fixture, with pods running the test CLI.
    fn engine(&self) -> Command {
        let mut cmd = engine();
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env(
                "ENGINE_K8S_WORKER_COMMAND",
                env!("CARGO_BIN_EXE_engine-cli"),
            )
            .env_remove("ENGINE_K8S_START_TIMEOUT")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE");
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
        ] {
            cmd.env_remove(k);
        }
        cmd
    }

    fn get(&self, path: &str) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the fixture");
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )
        .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    fn items(&self, path: &str) -> Vec<Value> {
        self.get(path)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn engine_pods(&self) -> Vec<Value> {
        self.items(
            "/api/v1/namespaces/default/pods?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dengine",
        )
    }

    /// API requests as `(verb, resource)`.
    fn requests(&self) -> Vec<(String, String, u64)> {
        self.get("/fixture/requests")
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["verb"].as_str().unwrap_or("").to_owned(),
                    r["resource"].as_str().unwrap_or("").to_owned(),
                    r["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Wait until the run left nothing behind: no pods, Secrets or owner
    /// ConfigMaps of the engine, and no pod process alive.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pods = self.engine_pods();
            let secrets = self.items("/api/v1/namespaces/default/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dengine");
            let configmaps =
                self.items("/api/v1/namespaces/default/configmaps?labelSelector=app.kubernetes.io%2Fcomponent%3Dworker");
            let alive: Vec<Value> = self
                .get("/fixture/processes")
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p["alive"].as_bool() == Some(true))
                .collect();
            if pods.is_empty() && secrets.is_empty() && configmaps.is_empty() && alive.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: pods {pods:#?}\nsecrets {secrets:#?}\nconfigmaps {configmaps:#?}\nprocesses {alive:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SIGTERM: the fixture kills the pod processes it started, then exits.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `faulty.misbehave` run on the kubernetes backend, its store in the
/// config's directory.
fn k8s_config(args: &str, workers: &str, worker_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\n{args}\n\
             [cluster]\nbackend = \"kubernetes\"\nworkers = {workers}\nstore = \"{}\"\n\
             [cluster.worker_config]\n{worker_config}\n\
             [limits]\nmemory = \"64M\"\ntimeout = \"5s\"\n[output]\npath = \"out/result.csv\"\n",
            store.display()
        ),
    )
    .expect("write config");
    dir
}

const WORKER_CONFIG: &str = "image = \"example/engine:test\"\nresources = { memory = \"256Mi\", cpu = \"500m\", \"nvidia.com/gpu\" = 1 }";

fn plugins_arg() -> String {
    guests_dir().display().to_string()
}

fn run_config(fx: &Fixture, dir: &Path, extra_env: &[(&str, &str)]) -> Output {
    fx.engine()
        .args(["run", "config.toml", "--plugins", &plugins_arg()])
        .envs(extra_env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("cannot start the engine binary")
}

fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the engine did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The same run on the local backend: the reference table.
fn local_table(args: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let dir = util::faulty_config(args, 2, "");
    let out = util::run_in(
        dir.path(),
        &["run", "config.toml", "--plugins", &plugins_arg()],
    );
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    read_csv(&dir.path().join("out/result.csv"))
}

#[test]
fn pods_scale_carry_resources_labels_owners_and_are_deleted() {
    let fx = Fixture::start(&[]);
    let args = "shards = 8\nsleep_ms = 400";
    let dir = k8s_config(args, "{ minimum = 1, maximum = 3 }", WORKER_CONFIG);
    let mut child = fx
        .engine()
        .args(["run", "config.toml", "--plugins", &plugins_arg()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start engine");
    // Watch the pods while the run goes.
    let mut most_alive = 0;
    let mut sample = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the run did not finish in time");
        let pods = fx.engine_pods();
        let alive = pods
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        most_alive = most_alive.max(alive);
        if sample.is_none() {
            sample = pods.into_iter().next();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        read_csv(&dir.path().join("out/result.csv")),
        local_table(args)
    );

    let pod = sample.expect("no pod was seen during the run");
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("engine-"), "{name}");
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "engine");
    assert_eq!(labels["app.kubernetes.io/component"], "worker");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "engine");
    let run = labels["engine.dev/run"].as_str().expect("run label");
    assert_eq!(name.rsplit_once('-').unwrap().0, format!("engine-{run}"));
    let owners = pod["metadata"]["ownerReferences"]
        .as_array()
        .expect("ownerReferences");
    assert_eq!(owners[0]["kind"], "ConfigMap");
    assert_eq!(owners[0]["name"], format!("engine-{run}"));
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "example/engine:test");
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&command[1..3], ["worker", "--store"]);
    assert!(
        command.contains(&"--run") && command.contains(&run) && command.contains(&name),
        "{command:?}"
    );
    for kind in ["requests", "limits"] {
        let r = &c["resources"][kind];
        assert_eq!(r["memory"], "256Mi", "{kind}");
        assert_eq!(r["cpu"], "500m", "{kind}");
        assert_eq!(r["nvidia.com/gpu"], "1", "{kind}");
    }
    assert!(
        c.get("env").is_none_or(|e| !e.to_string().contains("AWS_")),
        "no secrets in plain env"
    );

    let creates = fx
        .requests()
        .iter()
        .filter(|(v, r, s)| v == "create" && r == "pods" && *s < 300)
        .count();
    assert!((1..=3).contains(&creates), "{creates} pods created");
    assert!(most_alive <= 3, "{most_alive} pods alive at once");
    fx.assert_clean();
}

#[test]
fn a_run_with_a_failed_shard_leaves_no_pods() {
    let fx = Fixture::start(&[]);
    let args = "shards = 4\nbad = 1\nhow = \"trap\"";
    let dir = k8s_config(args, "2", "image = \"example/engine:test\"");
    let out = run_config(&fx, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("out/result.csv"));
    assert_eq!((header.clone(), rows.clone()), local_table(args));
    let error = header
        .iter()
        .position(|h| h == "error")
        .expect("error column");
    assert!(rows[1][error].starts_with("trap"), "{rows:?}");
    fx.assert_clean();
}

#[test]
fn ctrl_c_deletes_every_pod_and_the_secret() {
    let fx = Fixture::start(&[]);
    let dir = k8s_config(
        "shards = 12\nsleep_ms = 3000",
        "{ minimum = 2, maximum = 2 }",
        WORKER_CONFIG,
    );
    let mut child = fx
        .engine()
        .env("AWS_ACCESS_KEY_ID", "test-key")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .args(["run", "config.toml", "--plugins", &plugins_arg()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start engine");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before it was interrupted"
        );
        assert!(Instant::now() < deadline, "no pod got Running");
        let pods = fx.engine_pods();
        if pods.iter().any(|p| p["status"]["phase"] == "Running") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secrets = fx.items("/api/v1/namespaces/default/secrets");
    let secret = secrets
        .iter()
        .find(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-store"))
        })
        .expect("a store Secret while the run goes");
    assert!(
        secret["metadata"]["ownerReferences"][0]["kind"] == "ConfigMap",
        "{secret:#}"
    );
    let pod = &fx.engine_pods()[0];
    assert!(
        pod["spec"]["containers"][0]["envFrom"]
            .to_string()
            .contains("-store"),
        "{pod:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = wait_timeout(&mut child, Duration::from_secs(40));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    fx.assert_clean();
}

#[test]
fn a_forbidden_verb_is_named() {
    let fx = Fixture::start(&["--deny", "create:pods"]);
    let dir = k8s_config("shards = 2", "1", "image = \"example/engine:test\"");
    let out = run_config(&fx, dir.path(), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("create") && err.contains("pods") && err.contains("Forbidden"),
        "{err}"
    );
    fx.assert_clean();
    // The owner ConfigMap made before the refusal is gone too.
    assert!(
        fx.items(
            "/api/v1/namespaces/default/configmaps?labelSelector=app.kubernetes.io%2Fname%3Dengine"
        )
        .is_empty()
    );
}

#[test]
fn an_image_that_cannot_be_pulled_fails_the_run() {
    let fx = Fixture::start(&[]);
    let dir = k8s_config("shards = 2", "2", "image = \"example/does-not-exist:1\"");
    let started = Instant::now();
    let out = run_config(&fx, dir.path(), &[("ENGINE_K8S_START_TIMEOUT", "3s")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("ImagePullBackOff") || err.contains("ErrImagePull"),
        "{err}"
    );
    assert!(err.contains("cannot start"), "{err}");
    fx.assert_clean();
}

#[test]
fn the_image_is_required() {
    let fx = Fixture::start(&[]);
    let dir = k8s_config("shards = 2", "1", "");
    let out = run_config(&fx, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cluster.worker_config.image"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn submit_creates_a_configmap_and_a_job() {
    let fx = Fixture::start(&[]);
    let dir = k8s_config("shards = 2", "1", "image = \"example/engine:test\"");
    let out = fx
        .engine()
        .args([
            "submit",
            "config.toml",
            "--plugins",
            &plugins_arg(),
            "--image",
            "example/engine:submitted",
        ])
        .current_dir(dir.path())
        .output()
        .expect("start engine");
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let jobs = fx.items("/apis/batch/v1/namespaces/default/jobs");
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let job = &jobs[0];
    let name = job["metadata"]["name"].as_str().unwrap();
    assert!(
        printed.contains(&format!("kubectl logs -f job/{name} -n default")),
        "{printed}"
    );
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "engine");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "example/engine:submitted");
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&command[1..], ["run", "/config/config.toml"]);
    let cm = fx.get(&format!("/api/v1/namespaces/default/configmaps/{name}"));
    let written = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert_eq!(
        cm["data"]["config.toml"].as_str(),
        Some(written.as_str()),
        "{cm:#}"
    );

    // An invalid config creates nothing.
    let bad = k8s_config("shards = \"many\"", "1", "image = \"example/engine:test\"");
    let out = fx
        .engine()
        .args(["submit", "config.toml", "--plugins", &plugins_arg()])
        .current_dir(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(fx.items("/apis/batch/v1/namespaces/default/jobs").len(), 1);
}

/// The first test against a real cluster. Not run by default:
///
/// ```sh
/// kind create cluster                       # or: k3d cluster create
/// cp deploy/dockerignore.example .dockerignore
/// docker build -f deploy/Dockerfile -t engine:dev .
/// kind load docker-image engine:dev         # or: k3d image import engine:dev
/// # an S3 store the pods can reach, e.g. MinIO in the cluster, and its credentials:
/// export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_ENDPOINT_URL=http://minio.example:9000 \
///        AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
/// ENGINE_K8S_TEST_IMAGE=engine:dev ENGINE_K8S_TEST_STORE=s3://engine-test/runs \
///   cargo test -p engine-tests kubernetes::real_cluster -- --ignored
/// ```
///
/// `KUBECONFIG` (or `~/.kube/config`) selects the cluster; the namespace is
/// the context's. The function must be in the image (`faulty` is a test guest:
/// copy `target/guests/faulty.wasm` into the image's plugin directory, or set
/// `ENGINE_K8S_TEST_FUNCTION`/`ENGINE_K8S_TEST_ARGS` to a built-in plugin).
#[test]
#[ignore = "needs a real cluster, an image and an s3 store: see the doc comment"]
fn real_cluster() {
    let image = std::env::var("ENGINE_K8S_TEST_IMAGE").expect("ENGINE_K8S_TEST_IMAGE");
    let store = std::env::var("ENGINE_K8S_TEST_STORE").expect("ENGINE_K8S_TEST_STORE");
    let args = "shards = 8\nsleep_ms = 400";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\n{args}\n\
             [cluster]\nbackend = \"kubernetes\"\nworkers = {{ minimum = 1, maximum = 3 }}\nstore = \"{store}\"\n\
             [cluster.worker_config]\nimage = \"{image}\"\nresources = {{ memory = \"256Mi\", cpu = \"250m\" }}\n\
             [limits]\nmemory = \"64M\"\ntimeout = \"30s\"\n[output]\npath = \"out/result.csv\"\n"
        ),
    )
    .unwrap();
    let out = engine()
        .args(["run", "config.toml", "--plugins", &plugins_arg()])
        .current_dir(dir.path())
        .output()
        .expect("start engine");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        read_csv(&dir.path().join("out/result.csv")),
        local_table(args)
    );
}
