//! `engine submit`: the orchestrator as a Job in the cluster.

use super::*;

/// `engine submit`: what to submit.
pub struct SubmitOptions<'a> {
    pub cluster: &'a ClusterSection,
    pub run_id: &'a str,
    /// The config file as written.
    pub config_path: &'a std::path::Path,
    pub namespace: Option<String>,
    pub image: Option<String>,
}

/// What `engine submit` created.
pub struct Submitted {
    pub job: String,
    pub namespace: String,
}

/// Create a ConfigMap holding the config file and a Job running `engine run`
/// on it, as `deploy/orchestrator-job.yaml` does by hand.
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
    let file_name = opts
        .config_path
        .file_name()
        .and_then(|f| f.to_str())
        .context("the config path has no file name")?
        .to_owned();
    let text = std::fs::read_to_string(opts.config_path)
        .with_context(|| format!("cannot read `{}`", opts.config_path.display()))?;
    let (config, client) = connect().await?;
    let ns = opts
        .namespace
        .clone()
        .or_else(|| cluster.namespace.clone())
        .unwrap_or_else(|| config.default_namespace.clone());
    let suffix = format!("{:05x}", crate::work::queue::now_ms() & 0xfffff);
    let name = format!("engine-run-{}-{suffix}", opts.run_id);
    let labels = json!({
        "app.kubernetes.io/name": "engine",
        "app.kubernetes.io/component": "orchestrator",
        "app.kubernetes.io/managed-by": "engine",
        "engine.dev/run": opts.run_id,
    });

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let store_secret = match secrets.get_opt("engine-store").await {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::warn!("cannot check for the `engine-store` Secret: {e}");
            false
        }
    };
    let mut container = json!({
        "name": "engine",
        "image": image,
        "command": [engine_command(), "run", format!("/config/{file_name}")],
        "env": [
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
        ],
        "volumeMounts": [{ "name": "config", "mountPath": "/config", "readOnly": true }],
    });
    if store_secret {
        container["envFrom"] = json!([{ "secretRef": { "name": "engine-store" } }]);
    }
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
                    "containers": [container],
                    "volumes": [{ "name": "config", "configMap": { "name": name } }],
                },
            },
        },
    }))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .map_err(|e| api_error(e, "create", "jobs", &ns))?;
    // The ConfigMap belongs to the Job: deleting the Job deletes it.
    let uid = created.metadata.uid.unwrap_or_default();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [owner_ref("batch/v1", "Job", &name, &uid)],
        },
        "data": { file_name: text },
    }))?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &ns);
    if let Err(e) = configmaps.create(&PostParams::default(), &cm).await {
        let _ = jobs.delete(&name, &DeleteParams::background()).await;
        return Err(api_error(e, "create", "configmaps", &ns));
    }
    Ok(Submitted {
        job: name,
        namespace: ns,
    })
}
