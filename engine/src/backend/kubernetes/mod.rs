//! Worker pods: `backend = "kubernetes"`.
//!
//! Every worker is a pod running `engine worker --store URL --run ID --id NAME`
//! against the run the orchestrator published into `cluster.store` (an object
//! store every pod can reach); pods coordinate only through the store, and
//! get the run's data and compiled component from it, never from a host path.
//!
//! Per run the orchestrator creates, in `cluster.namespace` (else the
//! kubeconfig's namespace, else `default`):
//!
//! - a ConfigMap `engine-<run>` that owns everything else of the run (the pods
//!   and the Secret carry an ownerReference to it, so deleting it deletes them
//!   all) and holds the run's lease (`lease`): only its holder creates and
//!   deletes the run's pods. When the orchestrator itself runs in a pod
//!   (`POD_NAME` and `POD_NAMESPACE` set, as `engine submit` does) in the same
//!   namespace, that pod owns the ConfigMap: an orchestrator pod that dies
//!   takes its workers with it.
//! - a Secret `engine-<run>-store` with what workers need to reach the store
//!   (`pods::STORE_ENV` from this process's environment, or the config's
//!   `output.key`/`output.secret_key`) and the key proving the compiled
//!   component (`ENGINE_ARTIFACT_KEY`), given to the workers with `envFrom`,
//!   never as plain env values.
//! - pods `engine-<run>-<n>` (`pods`): the image `cluster.worker_config.image`,
//!   each `worker_config.resources` entry as both request and limit, the
//!   labels `app.kubernetes.io/{name=engine,component=worker,managed-by=engine}`,
//!   `engine.dev/run=<run>`, `engine.dev/role=worker` (and
//!   `engine.dev/tenant=<tenant>`). Only pods with the worker role are ever
//!   listed or deleted, so an orchestrator pod of the same run is never
//!   mistaken for a worker.
//!
//! Scaling (`scaling`): between `workers.minimum` and `workers.maximum` as the
//! queue needs; pods are never deleted while they may be busy (a worker exits
//! by itself once every shard has a part). A namespace ResourceQuota that
//! refuses a pod caps the pool where it is; the run goes on.
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
//! Everything is deleted when the run ends: success, failure, Ctrl-C or SIGTERM.

use crate::InputError;
use crate::config::ClusterSection;
use crate::store::RunStore;
use crate::work::RunSpec;
use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

mod api;
mod lease;
mod pods;
mod scaling;
mod submit;

use api::{api_error, connect, is_status, owner_ref};
use lease::{Lease, OwnerObject};
use pods::{Template, labels, worker_pod_spec, worker_selector};
use scaling::{PodState, is_quota, observe, wanted};
pub use submit::{SubmitOptions, Submitted, submit};

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

/// The run's worker pods and Secret: what the owner deletes at the end.
#[derive(Clone)]
struct Cleanup {
    ns: String,
    secret: Option<String>,
    selector: String,
}

impl Cleanup {
    /// Delete the run's worker pods and Secret (background propagation); a
    /// missing object is fine.
    async fn run(&self, client: &Client) -> Result<()> {
        let dp = DeleteParams::background();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.ns);
        let mut first_error = None;
        match pods
            .list(&ListParams::default().labels(&self.selector))
            .await
        {
            Ok(list) => {
                for name in list.items.into_iter().filter_map(|p| p.metadata.name) {
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

/// The worker pods of one run (see the module docs).
pub struct KubePool {
    config: Config,
    client: Client,
    pods: Api<Pod>,
    ns: String,
    run_id: String,
    /// The pod spec of worker `name`.
    template: Box<dyn Fn(&str) -> Value + Send + Sync>,
    labels: BTreeMap<String, String>,
    lease: Option<Lease>,
    minimum: usize,
    maximum: usize,
    next_index: usize,
    live: HashMap<String, LivePod>,
    /// Some pod of this run got its container started.
    started: bool,
    failures: usize,
    max_failures: usize,
    exits: Vec<String>,
    /// The namespace's quota refused a pod (said once).
    quota_warned: bool,
    start_timeout: Duration,
    store: RunStore,
    shards: usize,
    /// Shards with a part, as the orchestrator last counted them (its
    /// watch lists the parts anyway: scaling reads nothing more).
    finished: usize,
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
    /// Take the run's lease, create its Secret and first pods. On failure,
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

        // What workers need to reach the store, for the Secret.
        let mut secret_data: BTreeMap<String, String> = pods::STORE_ENV
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

        let engine = engine_command();
        let store_url = run.store_url.to_owned();
        let spec = run.spec.clone();
        let secret = secret_name.clone();
        let service_account = std::env::var("ENGINE_K8S_SERVICE_ACCOUNT")
            .ok()
            .filter(|s| !s.is_empty());
        let rust_log = std::env::var("RUST_LOG").ok();
        let template = move |name: &str| {
            worker_pod_spec(
                &Template {
                    engine: &engine,
                    image: &image,
                    store_url: &store_url,
                    spec: &spec,
                    worker: &worker_config,
                    secret: secret.as_deref(),
                    service_account: service_account.as_deref(),
                    rust_log: rust_log.as_deref(),
                },
                name,
            )
        };

        let maximum = run.cluster.workers.maximum.max(1);
        let mut pool = KubePool {
            config,
            pods: Api::namespaced(client.clone(), &ns),
            client,
            ns: ns.clone(),
            run_id: run_id.clone(),
            template: Box::new(template),
            labels: labels(run.spec, "worker"),
            lease: None,
            minimum: run.cluster.workers.minimum.max(1),
            maximum,
            next_index: 0,
            live: HashMap::new(),
            started: false,
            failures: 0,
            max_failures: 3 * maximum + 2,
            exits: Vec::new(),
            quota_warned: false,
            start_timeout,
            store: run.store.clone(),
            shards: run.spec.shards,
            finished: 0,
            cleanup: Cleanup {
                ns,
                secret: secret_name,
                selector: worker_selector(&run_id),
            },
            cleaned: false,
        };
        let lease = pool.acquire(run.spec).await?;
        pool.lease = Some(lease);
        match pool.launch(secret_data).await {
            Ok(()) => Ok(pool),
            Err(e) => {
                pool.cleanup().await;
                Err(e)
            }
        }
    }

    /// The run's owner ConfigMap and lease, owned by this orchestrator's pod
    /// if it runs in one.
    async fn acquire(&self, spec: &RunSpec) -> Result<Lease> {
        let mut owner_pod = None;
        if let (Ok(pod_name), Ok(pod_ns)) =
            (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE"))
            && pod_ns == self.ns
        {
            match self.pods.get(&pod_name).await {
                Ok(me) => {
                    let uid = me.metadata.uid.unwrap_or_default();
                    owner_pod = Some(owner_ref("v1", "Pod", &pod_name, &uid));
                }
                Err(e) => tracing::warn!(
                    "cannot read this orchestrator's pod `{pod_name}` to own the workers: {e}"
                ),
            }
        }
        let owner_labels = labels(spec, "owner");
        Lease::acquire(
            &self.client,
            &self.ns,
            OwnerObject {
                name: &format!("engine-{}", self.run_id),
                labels: &owner_labels,
                run_id: &self.run_id,
                shards: self.shards,
                owner_pod,
            },
        )
        .await
    }

    async fn launch(&mut self, secret_data: BTreeMap<String, String>) -> Result<()> {
        let ns = self.ns.clone();
        let owners = vec![self.lease.as_ref().expect("acquired").owner_ref()];

        // Pods of an earlier orchestrator of this run, whose lease was taken
        // over: the ones still running are adopted (their work is not lost),
        // and new pods are numbered after them so names never clash.
        let existing = self
            .pods
            .list(&ListParams::default().labels(&self.cleanup.selector))
            .await
            .map_err(|e| api_error(e, "list", "pods", &ns))?;
        let prefix = format!("engine-{}-", self.run_id);
        for pod in &existing.items {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            if let Some(i) = name
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<usize>().ok())
            {
                self.next_index = self.next_index.max(i + 1);
            }
            if matches!(observe(pod), PodState::Pending(_) | PodState::Running) {
                self.live.insert(
                    name,
                    LivePod {
                        created: Instant::now(),
                        warned: false,
                    },
                );
            }
        }
        if !existing.items.is_empty() {
            tracing::warn!(
                "{} worker pods of an earlier orchestrator of run {} are there; {} still running are adopted",
                existing.items.len(),
                self.run_id,
                self.live.len()
            );
        }

        if let Some(name) = &self.cleanup.secret {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": labels_with_role(&self.labels, "store"),
                    "ownerReferences": owners,
                },
                "type": "Opaque",
                "stringData": secret_data,
            }))?;
            if let Err(e) = secrets.create(&PostParams::default(), &secret).await {
                if !is_status(&e, 409) {
                    return Err(api_error(e, "create", "secrets", &ns));
                }
                // Left by an orchestrator whose lease this one took over.
                secrets
                    .replace(name, &PostParams::default(), &secret)
                    .await
                    .map_err(|e| api_error(e, "update", "secrets", &ns))?;
            }
        }

        self.finished = self.store.count("parts").await?;
        let first = self
            .minimum
            .min(self.shards.saturating_sub(self.finished))
            .max(1);
        while self.live.len() < first {
            match self.create_pod().await {
                Ok(()) => {}
                Err(e) if is_quota_error(&e) && !self.live.is_empty() => {
                    self.warn_quota(&e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(namespace = %ns, pods = self.live.len(), run = %self.run_id, "worker pods created");
        Ok(())
    }

    async fn create_pod(&mut self) -> Result<()> {
        let name = format!("engine-{}-{}", self.run_id, self.next_index);
        let owners = vec![self.lease.as_ref().expect("acquired").owner_ref()];
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": self.ns, "labels": self.labels, "ownerReferences": owners },
            "spec": (self.template)(&name),
        }))?;
        match self.pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(e) if is_quota(&e) => {
                return Err(QuotaRefused(format!(
                    "the namespace `{}` quota refused worker pod {name}: {}",
                    self.ns,
                    match &e {
                        kube::Error::Api(s) => s.message.clone(),
                        other => other.to_string(),
                    }
                ))
                .into());
            }
            Err(e) => return Err(api_error(e, "create", "pods", &self.ns)),
        }
        self.next_index += 1;
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

    fn warn_quota(&mut self, e: &anyhow::Error) {
        if !self.quota_warned {
            self.quota_warned = true;
            eprintln!(
                "warning: {e}; the pool stays at {} worker pods while the quota allows no more",
                self.live.len()
            );
        }
    }

    /// Look at the run's pods: note the finished, fail the run if none can
    /// start, replace failed pods and scale. `Some(reason)` once no pod is left
    /// and none will be created.
    pub async fn all_stopped(&mut self) -> Result<Option<String>> {
        if let Some(lease) = &self.lease {
            lease.check()?;
        }
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
            match observe(&pod) {
                PodState::Succeeded => {
                    self.started = true;
                    self.live.remove(&name);
                }
                PodState::Running => self.started = true,
                PodState::Failed(why) => {
                    // Its claims lapse with its heartbeat and its shards are
                    // offered again; a replacement comes with `scale`.
                    self.started |= why.contains("exited with code");
                    tracing::warn!("{why}");
                    eprintln!("warning: {why}");
                    self.exits.push(why);
                    self.failures += 1;
                    self.live.remove(&name);
                }
                PodState::Pending(None) => {}
                PodState::Pending(Some(why)) => {
                    if live.created.elapsed() >= self.start_timeout {
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

    /// Create pods up to what the queue can use (and the quota allows).
    async fn scale(&mut self) -> Result<()> {
        if self.failures > self.max_failures {
            return Ok(());
        }
        let remaining = self.shards.saturating_sub(self.finished);
        let want = wanted(self.minimum, self.maximum, remaining);
        while self.live.len() < want {
            match self.create_pod().await {
                Ok(()) => {}
                Err(e) if is_quota_error(&e) => {
                    if self.live.is_empty() {
                        bail!("{e}; no worker pod of the run can start");
                    }
                    self.warn_quota(&e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Delete everything of the run if this orchestrator holds it
    /// (idempotent; errors are printed).
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        self.live.clear();
        let Some(lease) = self.lease.take() else {
            return;
        };
        if !lease.held() {
            eprintln!(
                "warning: this orchestrator no longer holds run {}: its pods are left to the holder",
                self.run_id
            );
            return;
        }
        let work = async {
            self.cleanup.run(&self.client).await?;
            lease.release().await
        };
        match tokio::time::timeout(Duration::from_secs(30), work).await {
            Ok(Ok(())) => tracing::debug!(run = %self.run_id, "worker pods deleted"),
            Ok(Err(e)) => eprintln!("warning: cleaning up the run's Kubernetes objects: {e:#}"),
            Err(_) => eprintln!("warning: cleaning up the run's Kubernetes objects timed out"),
        }
    }
}

fn labels_with_role(labels: &BTreeMap<String, String>, role: &str) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.insert(pods::ROLE_LABEL.into(), role.into());
    l
}

/// The namespace's ResourceQuota refused a pod.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct QuotaRefused(String);

fn is_quota_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<QuotaRefused>().is_some()
}

impl Drop for KubePool {
    /// Best effort when an error path skipped `cleanup`: a fresh client on a
    /// thread of its own, so the caller's runtime is not needed.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        if !lease.held() {
            return;
        }
        let config = self.config.clone();
        let cleanup = self.cleanup.clone();
        let owner = lease.name.clone();
        // Dropping the lease stops its renewal.
        drop(lease);
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
                let work = async {
                    let _ = cleanup.run(&client).await;
                    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                        Api::namespaced(client.clone(), &cleanup.ns);
                    let _ = cms.delete(&owner, &DeleteParams::background()).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), work).await;
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
    async fn poll(&mut self, finished: usize) -> Result<Option<String>> {
        self.finished = finished;
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
