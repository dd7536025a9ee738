//! Worker pods: `backend = "kubernetes"`.
//!
//! Every worker is a pod running `engine worker --store URL --run ID --id NAME`
//! against the run the orchestrator published into `cluster.store`; pods
//! coordinate only through the store, exactly as `engine worker` processes do.
//!
//! Per run the orchestrator creates, in `cluster.namespace` (else the
//! kubeconfig's namespace, else `default`):
//!
//! - a ConfigMap `engine-<run>` that owns everything else of the run (the pods
//!   and the Secret carry an ownerReference to it, so deleting it deletes them
//!   all). When the orchestrator itself runs in a pod (`POD_NAME` and
//!   `POD_NAMESPACE` set, as `deploy/orchestrator-job.yaml` does) in the same
//!   namespace, that pod owns the ConfigMap: an orchestrator pod that dies takes
//!   its workers with it.
//! - a Secret `engine-<run>-store` with the store credentials of this process
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ALLOW_HTTP`, or
//!   the config's `output.key`/`output.secret_key`), given to the workers with
//!   `envFrom`, never as plain env values. Not created when there is nothing
//!   to put in it.
//! - pods `engine-<run>-<n>` with the image `cluster.worker_config.image`, each
//!   `worker_config.resources` entry as both request and limit, and the labels
//!   `app.kubernetes.io/{name=engine,component=worker,managed-by=engine}`,
//!   `engine.dev/run=<run>` (and `engine.dev/tenant=<tenant>`).
//!
//! Environment:
//!
//! - `ENGINE_K8S_WORKER_COMMAND`: the engine executable in the worker image
//!   (default `engine`);
//! - `ENGINE_K8S_SERVICE_ACCOUNT`: the worker pods' serviceAccountName (default:
//!   the namespace's default; workers never use the API, so no token is mounted);
//! - `ENGINE_K8S_START_TIMEOUT`: how long a pod may stay Pending with a reason
//!   that it cannot start (image pull errors, unschedulable, bad config) before
//!   the run fails, while no pod of the run has ever started (default `120s`).
//!
//! Everything is deleted when the run ends: success, failure or Ctrl-C.
//!
//! (Over 600 lines: one pool's whole lifecycle, from its first pod to its
//! cleanup. Pod-spec building and scaling decisions move to files of their own
//! with the real-cluster work; `api` and `submit` are apart already.)

use crate::InputError;
use crate::config::ClusterSection;
use crate::store::RunStore;
use crate::work::RunSpec;
use crate::work::queue::QueueState;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

mod api;
mod submit;

use api::{api_error, connect, is_status, owner_ref, quantity};
pub use submit::{SubmitOptions, Submitted, submit};

const SECRET_KEYS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
];

/// Waiting reasons that mean a container will not start by itself.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The engine executable inside the worker image.
fn engine_command() -> String {
    std::env::var("ENGINE_K8S_WORKER_COMMAND")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "engine".into())
}

fn start_timeout() -> Result<Duration> {
    match std::env::var("ENGINE_K8S_START_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(120)),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => humantime::parse_duration(text.trim()).map_err(|e| {
                InputError::msg(format!("ENGINE_K8S_START_TIMEOUT=`{text}`: {e}")).into()
            }),
        },
    }
}

/// What must be deleted at the end of a run.
#[derive(Clone)]
struct Cleanup {
    ns: String,
    owner: String,
    secret: Option<String>,
    selector: String,
}

impl Cleanup {
    /// Delete the run's pods, Secret and owner ConfigMap (background
    /// propagation); a missing object is fine.
    async fn run(&self, client: &Client) -> Result<()> {
        let dp = DeleteParams::background();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.ns);
        let mut first_error = None;
        match pods
            .list(&ListParams::default().labels(&self.selector))
            .await
        {
            Ok(list) => {
                for pod in list.items {
                    let Some(name) = pod.metadata.name else {
                        continue;
                    };
                    if let Err(e) = pods.delete(&name, &dp).await
                        && !is_status(&e, 404)
                    {
                        first_error =
                            first_error.or(Some(api_error(e, "delete", "pods", &self.ns)));
                    }
                }
            }
            Err(e) => first_error = first_error.or(Some(api_error(e, "list", "pods", &self.ns))),
        }
        if let Some(secret) = &self.secret {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.ns);
            if let Err(e) = secrets.delete(secret, &dp).await
                && !is_status(&e, 404)
            {
                first_error = first_error.or(Some(api_error(e, "delete", "secrets", &self.ns)));
            }
        }
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &self.ns);
        if let Err(e) = configmaps.delete(&self.owner, &dp).await
            && !is_status(&e, 404)
        {
            first_error = first_error.or(Some(api_error(e, "delete", "configmaps", &self.ns)));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A pod this run created that has not finished yet.
struct LivePod {
    created: Instant,
    warned: bool,
}

/// The worker pods of one run.
///
/// Scaling: `minimum` pods are started; on every poll the pool reads the queue
/// (`QueueState`) and creates pods while fewer than
/// `min(maximum, max(minimum, waiting + running))` (and no more than the
/// unfinished shards) are alive. Pods are never deleted while they may be
/// busy: a worker exits by itself once every shard has a part, so the pool
/// shrinks by pods finishing. A pod that fails (non-zero exit, OOMKilled,
/// evicted) loses its claims with its heartbeat, the lease protocol re-offers
/// its shards, and a replacement is created while work remains, up to a
/// bounded number of failures.
pub struct KubePool {
    config: Config,
    client: Client,
    pods: Api<Pod>,
    ns: String,
    run_id: String,
    /// Everything of a pod but its name.
    template: Value,
    labels: BTreeMap<String, String>,
    owners: Vec<Value>,
    minimum: usize,
    maximum: usize,
    next_index: usize,
    live: HashMap<String, LivePod>,
    /// Some pod of this run got its container started.
    started: bool,
    failures: usize,
    max_failures: usize,
    exits: Vec<String>,
    start_timeout: Duration,
    store: RunStore,
    shards: usize,
    lease: Duration,
    cleanup: Cleanup,
    cleaned: bool,
}

/// What the pool needs from the run.
pub struct KubeRun<'a> {
    pub cluster: &'a ClusterSection,
    /// `cluster.store`, resolved: where the pods find the run.
    pub store_url: &'a str,
    pub spec: &'a RunSpec,
    pub store: &'a RunStore,
    pub access: super::WorkerAccess<'a>,
}

impl KubePool {
    /// Create the run's owner object, Secret and first pods. On failure,
    /// whatever was created is deleted again.
    pub async fn start(run: KubeRun<'_>) -> Result<KubePool> {
        let cluster = run.cluster;
        let worker_config = cluster.worker_config.clone().unwrap_or_default();
        let Some(image) = worker_config.image.clone() else {
            return Err(InputError::msg(
                "`cluster.worker_config.image` is required with `backend = \"kubernetes\"`: the worker image \
                 (built from deploy/Dockerfile)",
            )
            .into());
        };
        let start_timeout = start_timeout()?;
        let (config, client) = connect().await?;
        let ns = cluster
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let run_id = run.spec.run_id.clone();
        let owner = format!("engine-{run_id}");
        let mut labels = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "engine".to_owned()),
            (
                "app.kubernetes.io/component".to_owned(),
                "worker".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "engine".to_owned(),
            ),
            ("engine.dev/run".to_owned(), run_id.clone()),
        ]);
        if let Some(t) = &run.spec.tenant {
            labels.insert("engine.dev/tenant".into(), t.clone());
        }
        let selector = format!("engine.dev/run={run_id}");

        // Store credentials, for the Secret.
        let mut secret_data: BTreeMap<String, String> = SECRET_KEYS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        if let Some((key, secret)) = run.access.credentials {
            secret_data.insert("AWS_ACCESS_KEY_ID".into(), key.clone());
            secret_data.insert("AWS_SECRET_ACCESS_KEY".into(), secret.clone());
        }
        if let Some(key) = run.access.artifact_key {
            secret_data.insert(crate::work::artifact::KEY_ENV.into(), key.to_owned());
        }
        let secret_name = (!secret_data.is_empty()).then(|| format!("engine-{run_id}-store"));

        let mut command = vec![
            engine_command(),
            "worker".into(),
            "--store".into(),
            run.store_url.to_owned(),
            "--run".into(),
            run_id.clone(),
        ];
        if let Some(t) = &run.spec.tenant {
            command.extend(["--tenant".into(), t.clone()]);
        }
        let resources: BTreeMap<String, String> = worker_config
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), quantity(v)))
            .collect();
        let mut container = json!({
            "name": "worker",
            "image": image,
            "command": command,
            "resources": { "requests": resources, "limits": resources },
        });
        if let Some(secret) = &secret_name {
            container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
        }
        if let Ok(level) = std::env::var("RUST_LOG") {
            container["env"] = json!([{ "name": "RUST_LOG", "value": level }]);
        }
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [container],
        });
        if let Ok(sa) = std::env::var("ENGINE_K8S_SERVICE_ACCOUNT")
            && !sa.is_empty()
        {
            pod_spec["serviceAccountName"] = json!(sa);
        }

        let maximum = run.cluster.workers.maximum.max(1);
        let mut pool = KubePool {
            config,
            pods: Api::namespaced(client.clone(), &ns),
            client,
            ns: ns.clone(),
            run_id,
            template: pod_spec,
            labels,
            owners: Vec::new(),
            minimum: run.cluster.workers.minimum.max(1),
            maximum,
            next_index: 0,
            live: HashMap::new(),
            started: false,
            failures: 0,
            max_failures: 3 * maximum + 2,
            exits: Vec::new(),
            start_timeout,
            store: run.store.clone(),
            shards: run.spec.shards,
            lease: Duration::from_millis(run.spec.lease_ms),
            cleanup: Cleanup {
                ns,
                owner,
                secret: secret_name,
                selector,
            },
            cleaned: false,
        };
        match pool.launch(secret_data).await {
            Ok(()) => Ok(pool),
            Err(e) => {
                pool.cleanup().await;
                Err(e)
            }
        }
    }

    async fn launch(&mut self, secret_data: BTreeMap<String, String>) -> Result<()> {
        let ns = self.ns.clone();
        // Leftovers of an earlier, interrupted orchestrator of the same run:
        // its owner object (and through it its pods) goes; new pods are
        // numbered after the old ones so names never clash.
        let existing = self
            .pods
            .list(&ListParams::default().labels(&self.cleanup.selector))
            .await
            .map_err(|e| api_error(e, "list", "pods", &ns))?;
        let prefix = format!("engine-{}-", self.run_id);
        self.next_index = existing
            .items
            .iter()
            .filter_map(|p| {
                p.metadata
                    .name
                    .as_deref()?
                    .strip_prefix(&prefix)?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0);
        if !existing.items.is_empty() {
            tracing::warn!(
                "{} pods of an earlier orchestrator of run {} are still there; deleting them",
                existing.items.len(),
                self.run_id
            );
            self.cleanup.run(&self.client).await?;
        }

        // The owner object, itself owned by this orchestrator's pod if any.
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let mut owner_meta = json!({
            "name": self.cleanup.owner,
            "namespace": ns,
            "labels": self.labels,
        });
        if let (Ok(pod_name), Ok(pod_ns)) =
            (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE"))
            && pod_ns == ns
        {
            match self.pods.get(&pod_name).await {
                Ok(me) => {
                    let uid = me.metadata.uid.unwrap_or_default();
                    owner_meta["ownerReferences"] =
                        json!([owner_ref("v1", "Pod", &pod_name, &uid)]);
                }
                Err(e) => tracing::warn!(
                    "cannot read this orchestrator's pod `{pod_name}` to own the workers: {e}"
                ),
            }
        }
        let owner_cm: ConfigMap = serde_json::from_value(json!({
            "metadata": owner_meta,
            "data": { "run": self.run_id, "shards": self.shards.to_string() },
        }))?;
        let mut tries = 0;
        let created = loop {
            match configmaps.create(&PostParams::default(), &owner_cm).await {
                Ok(c) => break c,
                // An old owner object still being deleted.
                Err(e) if is_status(&e, 409) && tries < 20 => {
                    tries += 1;
                    let _ = configmaps
                        .delete(&self.cleanup.owner, &DeleteParams::background())
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(api_error(e, "create", "configmaps", &ns)),
            }
        };
        let uid = created
            .metadata
            .uid
            .context("the API server gave the owner ConfigMap no uid")?;
        self.owners = vec![owner_ref("v1", "ConfigMap", &self.cleanup.owner, &uid)];

        if let Some(name) = &self.cleanup.secret {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": ns, "labels": self.labels, "ownerReferences": self.owners },
                "type": "Opaque",
                "stringData": secret_data,
            }))?;
            if let Err(e) = secrets.create(&PostParams::default(), &secret).await {
                if !is_status(&e, 409) {
                    return Err(api_error(e, "create", "secrets", &ns));
                }
                secrets
                    .replace(name, &PostParams::default(), &secret)
                    .await
                    .map_err(|e| api_error(e, "update", "secrets", &ns))?;
            }
        }

        let done = self.store.count("parts").await?;
        let first = self.minimum.min(self.shards.saturating_sub(done)).max(1);
        for _ in 0..first {
            self.create_pod().await?;
        }
        tracing::info!(namespace = %ns, pods = first, run = %self.run_id, "worker pods created");
        Ok(())
    }

    async fn create_pod(&mut self) -> Result<()> {
        let name = format!("engine-{}-{}", self.run_id, self.next_index);
        self.next_index += 1;
        let mut spec = self.template.clone();
        if let Some(command) = spec["containers"][0]["command"].as_array_mut() {
            command.extend([json!("--id"), json!(name)]);
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": self.ns, "labels": self.labels, "ownerReferences": self.owners },
            "spec": spec,
        }))?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| api_error(e, "create", "pods", &self.ns))?;
        tracing::debug!(pod = %name, "worker pod created");
        self.live.insert(
            name,
            LivePod {
                created: Instant::now(),
                warned: false,
            },
        );
        Ok(())
    }

    /// Look at the run's pods: note the finished, fail the run if none can
    /// start, replace failed pods and scale. `Some(reason)` once no pod is left
    /// and none will be created.
    pub async fn all_stopped(&mut self) -> Result<Option<String>> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&self.cleanup.selector))
            .await
            .map_err(|e| api_error(e, "list", "pods", &self.ns))?;
        let mut seen = Vec::new();
        for pod in list.items {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let Some(live) = self.live.get_mut(&name) else {
                continue;
            };
            seen.push(name.clone());
            let status = pod.status.unwrap_or_default();
            let container = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .next();
            let state = container
                .as_ref()
                .and_then(|c| c.state.clone())
                .unwrap_or_default();
            match status.phase.as_deref().unwrap_or("Pending") {
                "Succeeded" => {
                    self.started = true;
                    self.live.remove(&name);
                }
                "Failed" => {
                    let why = match &state.terminated {
                        Some(t) => {
                            self.started = true;
                            format!(
                                "worker pod {name} exited with code {}{}{}",
                                t.exit_code,
                                t.reason
                                    .as_deref()
                                    .map(|r| format!(" ({r})"))
                                    .unwrap_or_default(),
                                t.message
                                    .as_deref()
                                    .map(|m| format!(": {}", m.trim()))
                                    .unwrap_or_default()
                            )
                        }
                        None => format!(
                            "worker pod {name} failed: {}{}",
                            status.reason.as_deref().unwrap_or("Failed"),
                            status
                                .message
                                .as_deref()
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default()
                        ),
                    };
                    tracing::warn!("{why}");
                    self.exits.push(why);
                    self.failures += 1;
                    self.live.remove(&name);
                }
                "Running" => self.started = true,
                _ => {
                    // Pending: is it stuck?
                    let mut stuck = state.waiting.as_ref().and_then(|w| {
                        let reason = w.reason.as_deref()?;
                        STUCK_REASONS.contains(&reason).then(|| {
                            format!("{reason}: {}", w.message.as_deref().unwrap_or("").trim())
                        })
                    });
                    if stuck.is_none() {
                        stuck = status
                            .conditions
                            .unwrap_or_default()
                            .into_iter()
                            .find_map(|c| {
                                (c.type_ == "PodScheduled" && c.status == "False").then(|| {
                                    format!(
                                        "{}: {}",
                                        c.reason.as_deref().unwrap_or("Unschedulable"),
                                        c.message.as_deref().unwrap_or("").trim()
                                    )
                                })
                            });
                    }
                    if let Some(why) = stuck
                        && live.created.elapsed() >= self.start_timeout
                    {
                        let why = format!("worker pod {name} cannot start: {why}");
                        if !self.started {
                            bail!("{why}");
                        }
                        if !live.warned {
                            live.warned = true;
                            tracing::warn!("{why}; the run goes on with the pods that did start");
                        }
                    }
                }
            }
        }
        // Pods deleted or evicted by someone else.
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(name, p)| {
                !seen.contains(name) && p.created.elapsed() > Duration::from_secs(5)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let why = format!("worker pod {name} disappeared");
            tracing::warn!("{why}");
            self.exits.push(why);
            self.failures += 1;
            self.live.remove(&name);
        }

        self.scale().await?;
        if self.live.is_empty() {
            return Ok(Some(
                self.exits
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "every worker pod exited".into()),
            ));
        }
        Ok(None)
    }

    /// Create pods up to what the queue can use.
    async fn scale(&mut self) -> Result<()> {
        if self.failures > self.max_failures {
            return Ok(());
        }
        let state = QueueState::read(&self.store, self.lease).await?;
        let remaining = self.shards.saturating_sub(state.done.len());
        if remaining == 0 {
            return Ok(());
        }
        let running = state.running();
        let waiting = remaining.saturating_sub(running);
        let want = self
            .maximum
            .min(self.minimum.max(waiting + running))
            .min(remaining)
            .max(1);
        while self.live.len() < want {
            self.create_pod().await?;
        }
        Ok(())
    }

    /// Delete everything of the run (idempotent; errors are logged).
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        self.live.clear();
        match tokio::time::timeout(Duration::from_secs(30), self.cleanup.run(&self.client)).await {
            Ok(Ok(())) => tracing::debug!(run = %self.run_id, "worker pods deleted"),
            Ok(Err(e)) => eprintln!("warning: cleaning up the run's Kubernetes objects: {e:#}"),
            Err(_) => eprintln!("warning: cleaning up the run's Kubernetes objects timed out"),
        }
    }
}

impl Drop for KubePool {
    /// Best effort when an error path skipped `cleanup`: a fresh client on a
    /// thread of its own, so the caller's runtime is not needed.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let config = self.config.clone();
        let cleanup = self.cleanup.clone();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), cleanup.run(&client)).await;
            });
        });
        let _ = worker.join();
    }
}

/// Worker pods for `run` (see [`KubePool::start`]).
pub async fn start(run: KubeRun<'_>) -> Result<Box<dyn super::WorkerPool>> {
    Ok(Box::new(KubePool::start(run).await?))
}

#[async_trait::async_trait]
impl super::WorkerPool for KubePool {
    async fn poll(&mut self) -> Result<Option<String>> {
        self.all_stopped().await
    }

    async fn kill(&mut self) {
        self.cleanup().await;
    }

    /// Every shard has a part, so the pods are exiting by themselves: delete
    /// the run's objects.
    async fn join(mut self: Box<Self>) -> Result<()> {
        self.cleanup().await;
        Ok(())
    }
}
