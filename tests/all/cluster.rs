//! The real cluster the Kubernetes tests run on: the control plane, node agent
//! and worker image that `scripts/test` starts (tests/cluster/README.md), found
//! through `ENGINE_TEST_CLUSTER`.
//!
//! Each test gets a [`Namespace`] of its own: `deploy/rbac.yaml` applied into
//! it, the engine talking as its `engine` ServiceAccount (never as admin), and
//! an S3 bucket on a moto server that the pods reach through podman's bridge.
//! Tests holding a namespace run one at a time: the node has two cores.

use crate::util;
use serde_json::Value;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The worker image `scripts/cluster/podman-setup` builds.
pub const IMAGE: &str = "localhost/engine:dev";
/// Where pods reach the host: podman's bridge gateway.
pub const GATEWAY: &str = "10.88.0.1";
/// Label on every test namespace (its value: the test binary's pid), so a
/// crashed run's leftovers can be found.
const NS_LABEL: &str = "engine.test/kubernetes";

/// The cluster `scripts/test` started.
pub struct Cluster {
    admin: PathBuf,
    ca: PathBuf,
    server: String,
}

/// The cluster, checked once: fails (never skips) when it is not there.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let hint = "run the tests with scripts/test, which starts a real cluster \
                    (or by hand: scripts/cluster/up, scripts/cluster/podman-setup, scripts/cluster/node-agent, \
                    then ENGINE_TEST_CLUSTER=$PWD/target/cluster)";
        let dir = std::env::var_os("ENGINE_TEST_CLUSTER")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("ENGINE_TEST_CLUSTER is not set: {hint}"));
        let admin = dir.join("admin.kubeconfig");
        let ca = dir.join("run/pki/ca.crt");
        for f in [&admin, &ca] {
            assert!(f.exists(), "{} is missing: {hint}", f.display());
        }
        let kubectl = |args: &[&str]| {
            Command::new("kubectl")
                .arg(format!("--kubeconfig={}", admin.display()))
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run kubectl ({e}): {hint}"))
        };
        let ready = kubectl(&["get", "--raw", "/readyz"]);
        assert!(
            ready.status.success(),
            "the cluster in {} is not up ({}): {hint}",
            dir.display(),
            util::stderr(&ready).trim()
        );
        let nodes = kubectl(&["get", "nodes", "-o", "json"]);
        let nodes: Value = serde_json::from_slice(&nodes.stdout).unwrap_or_default();
        let ready_node = nodes["items"].as_array().into_iter().flatten().any(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        assert!(ready_node, "the cluster has no Ready node: {hint}");
        let image = Command::new("podman")
            .args(["image", "exists", IMAGE])
            .status()
            .unwrap_or_else(|e| panic!("cannot run podman ({e}): {hint}"));
        assert!(image.success(), "no image {IMAGE}: {hint}");
        let server = util::stdout(&kubectl(&[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]));
        // Namespaces a test binary that is gone (killed, or run with
        // ENGINE_TEST_KEEP_NAMESPACE) left behind; not those of one running now.
        let namespaces = kubectl(&["get", "namespaces", "-l", NS_LABEL, "-o", "json"]);
        let namespaces: Value = serde_json::from_slice(&namespaces.stdout).unwrap_or_default();
        for ns in namespaces["items"].as_array().into_iter().flatten() {
            let pid = ns["metadata"]["labels"][NS_LABEL].as_str().unwrap_or_default();
            if std::env::var_os("ENGINE_TEST_KEEP_NAMESPACE").is_none()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && let Some(name) = ns["metadata"]["name"].as_str()
            {
                kubectl(&["delete", "namespace", name, "--wait=false"]);
            }
        }
        Cluster { admin, ca, server }
    })
}

impl Cluster {
    /// `kubectl` as the cluster's admin (test set-up and inspection only).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.admin.display()));
        cmd
    }
}

/// Run `cmd`; its stdout, or a panic with its stderr.
pub fn checked(cmd: &mut Command) -> String {
    let o = cmd.output().expect("cannot run the command");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        util::stderr(&o),
        util::stdout(&o)
    );
    util::stdout(&o)
}

/// Call `f` every 200 ms until it returns `Some`, for at most `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One test's namespace, service account, kubeconfig and bucket; deleted on drop.
pub struct Namespace {
    pub name: String,
    /// The S3 bucket of this test (same name as the namespace).
    pub bucket: String,
    dir: tempfile::TempDir,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl Namespace {
    /// A fresh namespace with `deploy/rbac.yaml` applied as it is.
    pub fn new(test: &str) -> Namespace {
        Namespace::with_rbac(test, |rbac| rbac)
    }

    /// A fresh namespace with `deploy/rbac.yaml`, changed by `edit`, applied.
    pub fn with_rbac(test: &str, edit: impl FnOnce(String) -> String) -> Namespace {
        static SERIAL: Mutex<()> = Mutex::new(());
        let c = cluster();
        // A failed test poisons the lock; the next one still runs.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let slug: String = test
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() {
                    ch.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("t-{}-{:05x}", slug.trim_matches('-'), nanos & 0xfffff);
        let ns = Namespace {
            bucket: name.clone(),
            name,
            dir: tempfile::tempdir().expect("tempdir"),
            started: Instant::now(),
            _serial: serial,
        };
        ns.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    {NS_LABEL}: \"{}\"\n",
            ns.name,
            std::process::id()
        ));
        let rbac = std::fs::read_to_string(util::root().join("deploy/rbac.yaml"))
            .expect("read deploy/rbac.yaml")
            .replace("namespace: engine", &format!("namespace: {}", ns.name));
        ns.apply(&edit(rbac));
        // Pods are admitted only once the namespace's `default` ServiceAccount exists.
        wait_until(
            "the default ServiceAccount",
            Duration::from_secs(30),
            || {
                ns.kubectl(&["get", "serviceaccount", "default"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        let token = checked(
            ns.admin()
                .args(["create", "token", "engine", "--duration=2h"]),
        );
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: engine\n  user:\n    token: {}\ncontexts:\n- name: test\n  \
             context:\n    cluster: test\n    user: engine\n    namespace: {}\ncurrent-context: test\n",
            c.server,
            c.ca.display(),
            token.trim(),
            ns.name
        );
        std::fs::write(ns.kubeconfig(), kubeconfig).expect("write kubeconfig");
        moto().create_bucket(&ns.bucket);
        ns
    }

    /// The kubeconfig of this namespace's `engine` ServiceAccount.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `s3://<bucket>/<path>`.
    pub fn s3(&self, path: &str) -> String {
        format!("s3://{}/{path}", self.bucket)
    }

    /// The engine as this namespace's ServiceAccount, with the bucket's credentials.
    pub fn engine(&self) -> Command {
        let mut cmd = util::engine();
        for k in [
            "POD_NAME",
            "POD_NAMESPACE",
            "ENGINE_K8S_START_TIMEOUT",
            "ENGINE_K8S_WORKER_COMMAND",
            "ENGINE_K8S_SERVICE_ACCOUNT",
            "ENGINE_ARTIFACT_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_ALLOW_HTTP",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("KUBECONFIG", self.kubeconfig())
            .envs(moto().env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `kubectl -n <namespace>` as admin.
    pub fn admin(&self) -> Command {
        let mut cmd = cluster().kubectl();
        cmd.args(["-n", &self.name]);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.admin()
            .args(args)
            .output()
            .expect("cannot run kubectl")
    }

    /// `kubectl apply -f -` of `yaml` in this namespace.
    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .admin()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run kubectl");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "kubectl apply: {}", util::stderr(&o));
    }

    /// `kubectl get <what> -o json`.
    pub fn get(&self, what: &[&str]) -> Value {
        let o = self
            .admin()
            .arg("get")
            .args(what)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kubectl get {what:?}: {}",
            util::stderr(&o)
        );
        serde_json::from_slice(&o.stdout).expect("kubectl printed JSON")
    }

    /// The `items` of `kubectl get <kind>`.
    pub fn items(&self, kind: &str) -> Vec<Value> {
        self.get(&[kind])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn pods(&self) -> Vec<Value> {
        self.items("pods")
    }

    /// Pods, Secrets and ConfigMaps in the namespace but those a namespace
    /// always has (`kube-root-ca.crt`, service-account tokens), those of an
    /// orchestrator Job (`engine submit`: the Job owns them, they outlive the
    /// run) and the test's own (labelled `engine.test/keep`).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for kind in ["pods", "secrets", "configmaps"] {
            for o in self.items(kind) {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                if name == "kube-root-ca.crt"
                    || o["type"] == "kubernetes.io/service-account-token"
                    || o["metadata"]["labels"]["app.kubernetes.io/component"] == "orchestrator"
                    || o["metadata"]["labels"]["engine.test/keep"].is_string()
                {
                    continue;
                }
                let phase = o["status"]["phase"].as_str().unwrap_or_default();
                left.push(format!("{kind}/{name} {phase}").trim_end().to_owned());
            }
        }
        left
    }

    /// Wait until the run's objects are gone (`leftovers` is empty) after `what`.
    pub fn assert_clean(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind 60 s after {what}: {left:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// An object of the bucket, if it exists.
    pub fn s3_text(&self, key: &str) -> Option<String> {
        moto().boto3(&format!(
            "import sys\ntry:\n    body = s3.get_object(Bucket='{}', Key='{key}')['Body'].read()\n\
             except s3.exceptions.NoSuchKey:\n    sys.exit(3)\nsys.stdout.write(body.decode())",
            self.bucket
        ))
    }

    /// Every key in the bucket under `prefix`.
    pub fn s3_keys(&self, prefix: &str) -> Vec<String> {
        let out = moto()
            .boto3(&format!(
                "p = s3.get_paginator('list_objects_v2')\n\
                 for page in p.paginate(Bucket='{}', Prefix='{prefix}'):\n    \
                 for o in page.get('Contents', []):\n        print(o['Key'])",
                self.bucket
            ))
            .unwrap_or_default();
        out.lines().map(str::to_owned).collect()
    }

    /// Follow the namespace's pods until [`PodWatch::stop`].
    pub fn watch_pods(&self) -> PodWatch {
        PodWatch::start(self.admin().args([
            "get",
            "pods",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ]))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        eprintln!(
            "namespace {}: {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        if std::thread::panicking() {
            // What the cluster saw, for the failure's report.
            let o = self.kubectl(&["get", "pods,configmaps,secrets,jobs", "-o", "wide"]);
            let e = self.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
            let e = util::stdout(&e);
            let events: Vec<&str> = e.lines().collect();
            eprintln!(
                "namespace {}:\n{}{}\nlast events:\n{}",
                self.name,
                util::stdout(&o),
                util::stderr(&o),
                events[events.len().saturating_sub(25)..].join("\n")
            );
        }
        if std::env::var_os("ENGINE_TEST_KEEP_NAMESPACE").is_some() {
            eprintln!("namespace {} kept (ENGINE_TEST_KEEP_NAMESPACE)", self.name);
            return;
        }
        let _ = self.kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        // The next test gets the node to itself: wait for this one's pods to go.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let o = self.kubectl(&["get", "pods", "-o", "name"]);
            if !o.status.success() || o.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!(
            "warning: pods of namespace {} still there after 90 s",
            self.name
        );
    }
}

/// A `kubectl get pods --watch` in the background: every state every pod went through.
pub struct PodWatch {
    child: Child,
    events: Arc<Mutex<Vec<(String, Value)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PodWatch {
    fn start(cmd: &mut Command) -> PodWatch {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run kubectl");
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            let stream =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for event in stream.flatten() {
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                sink.lock().unwrap().push((kind, event["object"].clone()));
            }
        });
        let watch = PodWatch {
            child,
            events,
            reader: Some(reader),
        };
        // The watch is established when it has listed what exists (maybe nothing).
        std::thread::sleep(Duration::from_millis(700));
        watch
    }

    /// Every event so far: (`ADDED` | `MODIFIED` | `DELETED`, the pod).
    pub fn events(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }

    /// Stop watching; the events seen.
    pub fn stop(mut self) -> Vec<(String, Value)> {
        // Let the last changes arrive.
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The most pods alive (created, not yet Succeeded, Failed or deleted) at once.
pub fn most_alive(events: &[(String, Value)]) -> usize {
    let mut alive = std::collections::HashSet::new();
    let mut most = 0;
    for (kind, pod) in events {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let done = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if kind == "DELETED" || done {
            alive.remove(&name);
        } else {
            alive.insert(name);
        }
        most = most.max(alive.len());
    }
    most
}

/// The last state of every pod seen, by name.
pub fn last_states(events: &[(String, Value)]) -> std::collections::BTreeMap<String, Value> {
    let mut last = std::collections::BTreeMap::new();
    for (_, pod) in events {
        if let Some(name) = pod["metadata"]["name"].as_str() {
            last.insert(name.to_owned(), pod.clone());
        }
    }
    last
}

/// Every phase a pod went through, in order, without repeats.
pub fn phases(events: &[(String, Value)], pod: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, p) in events.iter().filter(|(_, p)| p["metadata"]["name"] == pod) {
        if let Some(phase) = p["status"]["phase"].as_str()
            && out.last().map(String::as_str) != Some(phase)
        {
            out.push(phase.to_owned());
        }
    }
    out
}

/// The moto S3 server of this test binary, on every address, so pods reach
/// it at the gateway.
pub struct Moto {
    port: u16,
    /// The engine's store settings for it (what the pods get, too).
    pub env: Vec<(String, String)>,
    _child: Child,
}

/// Where the moto server of this test binary logs (for a failure's report).
fn moto_log() -> std::path::PathBuf {
    util::root().join(format!("target/cluster/moto-{}.log", std::process::id()))
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let (child, port) = util::spawn_moto("0.0.0.0", GATEWAY, &moto_log());
        let env = [
            ("AWS_ENDPOINT_URL", format!("http://{GATEWAY}:{port}")),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        Moto {
            port,
            env,
            _child: child,
        }
    })
}

impl Moto {
    /// Run a python script with `s3`, a boto3 client of this server: its
    /// stdout, or `None` when it exits with 3.
    fn boto3(&self, script: &str) -> Option<String> {
        let o = Command::new(util::venv_bin("python"))
            .args([
                "-c",
                &format!(
                    "import boto3\ns3 = boto3.client('s3', endpoint_url='http://{GATEWAY}:{}', \
                     aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{script}",
                    self.port
                ),
            ])
            .output()
            .unwrap();
        if o.status.code() == Some(3) {
            return None;
        }
        assert!(
            o.status.success(),
            "boto3: {}\nthe last lines of {}:\n{}",
            util::stderr(&o),
            moto_log().display(),
            std::fs::read_to_string(moto_log())
                .map(|l| l.lines().rev().take(15).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default()
        );
        Some(util::stdout(&o))
    }

    fn create_bucket(&self, bucket: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }
}

/// A process in the background, its output collected as it goes (a full
/// pipe never blocks it).
pub struct Running {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// What a [`Running`] process left.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the process");
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = r.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -<signal>` it (`INT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Wait for it to exit; after `limit` it is killed and the test fails.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self.stderr.take().unwrap().join().unwrap_or_default();
                panic!("still running after {limit:?}; killed. stderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Finished {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap_or_default(),
            stderr: self.stderr.take().unwrap().join().unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
