//! `engine submit`: the orchestrator as a Job in the cluster.
//!
//! The Job runs `engine run /config/<file>` in the engine image, in the
//! cluster's own configuration (its ServiceAccount `engine`, see
//! `deploy/rbac.yaml`). Nothing in the uploaded config depends on the
//! submitting machine: the output and the store must be object-store URLs, a
//! local `run.data` directory is uploaded into the store first (and the config
//! points at it), and credentials written in the config go into a Secret of
//! the Job's, never into its ConfigMap.

use super::api::{api_error, connect, owner_ref};
use super::pods::{ROLE_LABEL, RUN_LABEL, STORE_ENV};
use crate::InputError;
use crate::config::ClusterSection;
use crate::store::Location;
use crate::work::data::LocalData;
use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `engine submit`: what to submit (the run as `engine run` prepared it).
pub struct SubmitOptions<'a> {
    pub cluster: &'a ClusterSection,
    pub run_id: &'a str,
    /// The config file as written.
    pub config_path: &'a std::path::Path,
    /// `output.path`, resolved.
    pub output: &'a str,
    /// `cluster.store`, resolved.
    pub store: &'a str,
    pub tenant: Option<&'a str>,
    /// `run.data`, read on this machine.
    pub data: Option<&'a LocalData>,
    /// Credentials written in the config.
    pub credentials: Option<(String, String)>,
    pub namespace: Option<String>,
    pub image: Option<String>,
}

/// What `engine submit` created.
pub struct Submitted {
    pub job: String,
    pub namespace: String,
    /// Where a local `run.data` was uploaded.
    pub data: Option<String>,
}

/// A config path the orchestrator pod could not see.
fn local_path_error(what: &str, value: &str) -> anyhow::Error {
    InputError::msg(format!(
        "`{what} = \"{value}\"` is a path on this machine; the orchestrator of `engine submit` runs in a pod, \
         which cannot see it (and whose disk is gone when it ends): give an object-store URL such as \
         `s3://bucket/prefix`"
    ))
    .into()
}

/// Create the Job and its ConfigMap (the config, rewritten) and Secret (the
/// store credentials), as `deploy/orchestrator-job.yaml` does by hand.
pub async fn submit(opts: SubmitOptions<'_>) -> Result<Submitted> {
    let cluster = opts.cluster;
    let image = opts
        .image
        .clone()
        .or_else(|| cluster.worker_config.as_ref().and_then(|w| w.image.clone()))
        .ok_or_else(|| {
            InputError::msg(
                "no image: set `cluster.worker_config.image` in the config or pass `--image`",
            )
        })?;
    if !opts.output.contains("://") || opts.output.starts_with("file://") {
        return Err(local_path_error("output.path", opts.output));
    }
    if !opts.store.contains("://")
        || opts.store.starts_with("file://")
        || opts.store.starts_with("memory://")
    {
        if opts.store.starts_with("memory://") && cluster.backend == crate::config::Backend::Local {
            // Threads in the orchestrator pod: its memory is the store.
        } else {
            return Err(local_path_error("cluster.store", opts.store));
        }
    }
    let json_config = opts
        .config_path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let text = std::fs::read_to_string(opts.config_path)
        .with_context(|| format!("cannot read `{}`", opts.config_path.display()))?;
    let mut config: Value = if json_config {
        serde_json::from_str(&text)?
    } else {
        toml::from_str(&text)?
    };

    // A local data directory goes into the store, where the pod reads it.
    let mut uploaded = None;
    if let Some(local) = opts.data {
        let written = config["run"]["data"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !written.contains("://") {
            if !opts.store.contains("://") || opts.store.starts_with("memory://") {
                return Err(local_path_error("run.data", &written));
            }
            let base = Location::parse_with(opts.store, opts.credentials.as_ref())?;
            let prefix = match opts.tenant {
                Some(t) => format!("tenants/{t}/uploads/data-{}", local.id),
                None => format!("uploads/data-{}", local.id),
            };
            let target = base.child(&prefix);
            upload_dir(local, &target)
                .await
                .with_context(|| format!("cannot upload `run.data` to `{}`", target.display))?;
            config["run"]["data"] = json!(format!("{}/", target.display));
            uploaded = Some(target.display.clone());
        }
    }
    // The resolved output and store, and no credentials.
    config["output"]["path"] = json!(opts.output);
    if let Some(output) = config["output"].as_object_mut() {
        output.remove("bucket");
        output.remove("key");
        output.remove("secret_key");
    }
    if opts.store != "memory://" {
        config["cluster"]["store"] = json!(opts.store);
    }
    let file_name = if json_config {
        "config.json"
    } else {
        "config.toml"
    };
    let rewritten = if json_config {
        serde_json::to_string_pretty(&config)?
    } else {
        toml::to_string(&config).context("cannot write the config back as TOML")?
    };

    let (kube_config, client) = connect().await?;
    let ns = opts
        .namespace
        .clone()
        .or_else(|| cluster.namespace.clone())
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let suffix = format!("{:05x}", crate::work::queue::now_ms() & 0xfffff);
    let name = format!("engine-run-{}-{suffix}", opts.run_id);
    let labels = json!({
        "app.kubernetes.io/name": "engine",
        "app.kubernetes.io/component": "orchestrator",
        "app.kubernetes.io/managed-by": "engine",
        RUN_LABEL: opts.run_id,
        ROLE_LABEL: "orchestrator",
    });

    // What the orchestrator needs to reach the store: this process's
    // environment and the config's credentials.
    let mut store_env: BTreeMap<String, String> = STORE_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    if let Some((key, secret)) = &opts.credentials {
        store_env.insert("AWS_ACCESS_KEY_ID".into(), key.clone());
        store_env.insert("AWS_SECRET_ACCESS_KEY".into(), secret.clone());
    }

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "data": { file_name: rewritten },
    }))?;
    let mut cm = configmaps
        .create(&PostParams::default(), &cm)
        .await
        .map_err(|e| api_error(e, "create", "configmaps", &ns))?;
    let mut secret = None;
    if !store_env.is_empty() {
        let s: Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns, "labels": labels },
            "type": "Opaque",
            "stringData": store_env,
        }))?;
        match secrets.create(&PostParams::default(), &s).await {
            Ok(s) => secret = Some(s),
            Err(e) => {
                let _ = configmaps.delete(&name, &DeleteParams::background()).await;
                return Err(api_error(e, "create", "secrets", &ns));
            }
        }
    }
    let undo = || async {
        let _ = configmaps.delete(&name, &DeleteParams::background()).await;
        let _ = secrets.delete(&name, &DeleteParams::background()).await;
    };

    let mut env_from = vec![json!({ "secretRef": { "name": "engine-store", "optional": true } })];
    if secret.is_some() {
        env_from.push(json!({ "secretRef": { "name": name } }));
    }
    let container = json!({
        "name": "engine",
        "image": image,
        "command": [super::engine_command(), "run", format!("/config/{file_name}")],
        "env": [
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            { "name": "ENGINE_CACHE_DIR", "value": "/tmp/engine-cache" },
        ],
        "envFrom": env_from,
        "volumeMounts": [
            { "name": "config", "mountPath": "/config", "readOnly": true },
            { "name": "tmp", "mountPath": "/tmp" },
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "serviceAccountName": "engine",
                    "restartPolicy": "Never",
                    "enableServiceLinks": false,
                    "containers": [container],
                    "volumes": [
                        { "name": "config", "configMap": { "name": name } },
                        { "name": "tmp", "emptyDir": {} },
                    ],
                },
            },
        },
    }))?;
    let created = match jobs.create(&PostParams::default(), &job).await {
        Ok(j) => j,
        Err(e) => {
            undo().await;
            return Err(api_error(e, "create", "jobs", &ns));
        }
    };
    // The ConfigMap and Secret belong to the Job: deleting it (or its TTL)
    // deletes them.
    let uid = created.metadata.uid.unwrap_or_default();
    let owners = vec![serde_json::from_value(owner_ref(
        "batch/v1", "Job", &name, &uid,
    ))?];
    cm.metadata.owner_references = Some(owners.clone());
    if let Err(e) = configmaps.replace(&name, &PostParams::default(), &cm).await {
        tracing::warn!("{}", api_error(e, "update", "configmaps", &ns));
    }
    if let Some(mut s) = secret {
        s.metadata.owner_references = Some(owners);
        if let Err(e) = secrets.replace(&name, &PostParams::default(), &s).await {
            tracing::warn!("{}", api_error(e, "update", "secrets", &ns));
        }
    }
    Ok(Submitted {
        job: name,
        namespace: ns,
        data: uploaded,
    })
}

/// Upload the files of `local` below `target` (those already there with the
/// same size are skipped: the prefix is named by the tree's content).
async fn upload_dir(local: &LocalData, target: &Location) -> Result<()> {
    use futures::StreamExt;
    let mut uploads = futures::stream::iter(local.tree.files.iter().map(|entry| {
        let dest = target.child(&entry.path);
        let file = local.dir.join(&entry.path);
        async move {
            if let Ok(meta) = dest.store.head(&dest.path).await
                && meta.size == entry.size
            {
                return Ok(());
            }
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            dest.store
                .put(&dest.path, bytes.into())
                .await
                .with_context(|| format!("cannot write `{}`", dest.display))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(8);
    while let Some(done) = uploads.next().await {
        done?;
    }
    Ok(())
}
