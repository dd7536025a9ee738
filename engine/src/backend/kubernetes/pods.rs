//! What the run's objects look like: labels, the worker pod, the Secret.
//! Pure functions of the run, so they are tested without a cluster.

use super::api::quantity;
use crate::config::WorkerConfig;
use crate::work::RunSpec;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Environment variables copied from the orchestrator into the workers'
/// Secret: what a worker needs to reach the store.
pub(super) const STORE_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
];

/// The label every object of a run carries, and the role label that tells
/// a worker pod from the orchestrator's own pod and the owner ConfigMap.
pub(super) const RUN_LABEL: &str = "engine.dev/run";
pub(super) const ROLE_LABEL: &str = "engine.dev/role";

/// The labels of a run's objects with `role` (`worker`, `owner`, `store`).
pub(super) fn labels(spec: &RunSpec, role: &str) -> BTreeMap<String, String> {
    let component = if role == "worker" {
        "worker"
    } else {
        "orchestrator"
    };
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "engine".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "engine".to_owned(),
        ),
        (RUN_LABEL.to_owned(), spec.run_id.clone()),
        (ROLE_LABEL.to_owned(), role.to_owned()),
    ]);
    if let Some(t) = &spec.tenant {
        labels.insert("engine.dev/tenant".into(), t.clone());
    }
    labels
}

/// The selector of a run's worker pods, and of nothing else.
pub(super) fn worker_selector(run_id: &str) -> String {
    format!("{RUN_LABEL}={run_id},{ROLE_LABEL}=worker")
}

/// Everything a worker pod's spec needs.
pub(super) struct Template<'a> {
    pub engine: &'a str,
    pub image: &'a str,
    pub store_url: &'a str,
    pub spec: &'a RunSpec,
    pub worker: &'a WorkerConfig,
    pub secret: Option<&'a str>,
    pub service_account: Option<&'a str>,
    pub rust_log: Option<&'a str>,
}

/// The spec of a worker pod named `name`: `engine worker` on the run, each
/// resource as request and limit, store access only from the Secret, a
/// read-only root with an emptyDir for the cache, no API token.
pub(super) fn worker_pod_spec(t: &Template, name: &str) -> Value {
    let mut command = vec![
        t.engine.to_owned(),
        "worker".into(),
        "--store".into(),
        t.store_url.to_owned(),
        "--run".into(),
        t.spec.run_id.clone(),
        "--id".into(),
        name.to_owned(),
    ];
    if let Some(tenant) = &t.spec.tenant {
        command.extend(["--tenant".into(), tenant.clone()]);
    }
    let resources: BTreeMap<String, String> = t
        .worker
        .resources
        .iter()
        .map(|(k, v)| (k.clone(), quantity(v)))
        .collect();
    let mut env = vec![json!({ "name": "ENGINE_CACHE_DIR", "value": "/tmp/engine-cache" })];
    if let Some(level) = t.rust_log {
        env.push(json!({ "name": "RUST_LOG", "value": level }));
    }
    let mut container = json!({
        "name": "worker",
        "image": t.image,
        "command": command,
        "env": env,
        "resources": { "requests": resources, "limits": resources },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    if let Some(secret) = t.secret {
        container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "containers": [container],
        "volumes": [{ "name": "tmp", "emptyDir": {} }],
    });
    if let Some(sa) = t.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, Quantity};

    fn spec() -> RunSpec {
        RunSpec {
            format: crate::work::FORMAT,
            run_id: "abc".into(),
            function: "f.g".into(),
            args: Default::default(),
            component_sha256: String::new(),
            data: None,
            seed: 0,
            tenant: Some("team-a".into()),
            limits: Limits::default(),
            shards: 3,
            lease_ms: 1000,
            shard_pages: Vec::new(),
            cache: true,
        }
    }

    #[test]
    fn a_worker_pod_is_least_privileged_and_labelled_as_a_worker() {
        let spec = spec();
        let worker = WorkerConfig {
            image: Some("img".into()),
            resources: BTreeMap::from([
                ("cpu".to_owned(), Quantity::Number(1.0)),
                ("memory".to_owned(), Quantity::Text("1Gi".into())),
            ]),
            setup: None,
        };
        let t = Template {
            engine: "engine",
            image: "img",
            store_url: "s3://b/p",
            spec: &spec,
            worker: &worker,
            secret: Some("engine-abc-store"),
            service_account: None,
            rust_log: None,
        };
        let pod = worker_pod_spec(&t, "engine-abc-0");
        let c = &pod["containers"][0];
        assert_eq!(
            c["command"],
            json!([
                "engine",
                "worker",
                "--store",
                "s3://b/p",
                "--run",
                "abc",
                "--id",
                "engine-abc-0",
                "--tenant",
                "team-a"
            ])
        );
        assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "engine-abc-store");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        let l = labels(&spec, "worker");
        assert_eq!(l[ROLE_LABEL], "worker");
        assert_eq!(l["engine.dev/tenant"], "team-a");
        assert_eq!(
            labels(&spec, "owner")["app.kubernetes.io/component"],
            "orchestrator"
        );
        assert_eq!(
            worker_selector("abc"),
            "engine.dev/run=abc,engine.dev/role=worker"
        );
    }
}
