//! Talking to the API server: the client, and errors that name what was refused.

use crate::config::Quantity;
use anyhow::{Context, Result, anyhow};
use kube::{Client, Config};
use serde_json::{Value, json};

/// A client from `KUBECONFIG` / `~/.kube/config`, else the in-cluster config.
pub(super) async fn connect() -> Result<(Config, Client)> {
    let config = Config::infer().await.context(
        "cannot find a Kubernetes configuration: set KUBECONFIG (or ~/.kube/config), or run in a pod with a \
         service account",
    )?;
    let client = Client::try_from(config.clone()).context("cannot create a Kubernetes client")?;
    Ok((config, client))
}

/// An API error that names what was refused, with the server's own message.
pub(super) fn api_error(e: kube::Error, verb: &str, resource: &str, ns: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "Kubernetes refused to {verb} {resource} in namespace `{ns}` (403 Forbidden): {}; the engine's \
             account needs `{verb}` on `{resource}` (see deploy/rbac.yaml)",
            s.message
        ),
        kube::Error::Api(s) => {
            anyhow!(
                "cannot {verb} {resource} in namespace `{ns}`: {} ({} {})",
                s.message,
                s.code,
                s.reason
            )
        }
        _ => anyhow!(e).context(format!("cannot {verb} {resource} in namespace `{ns}`")),
    }
}

pub(super) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

pub(super) fn quantity(q: &Quantity) -> String {
    q.to_string()
}

pub(super) fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({ "apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": true })
}
