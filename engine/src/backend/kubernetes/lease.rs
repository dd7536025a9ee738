//! The run's owner ConfigMap `engine-<run>`: every other object of the run
//! is owned by it (ownerReferences), and it holds a lease, so that only one
//! orchestrator of a run creates and deletes its pods.
//!
//! The holder renews the lease every [`RENEW`] by updating the ConfigMap
//! (its `renewals` count). A second orchestrator of the same run finds the
//! ConfigMap, watches its resourceVersion for [`STALE`] by its own clock (no
//! clock is compared across machines), and refuses to start while it
//! changes; a lease left unrenewed that long was left by an orchestrator that
//! died, and is taken over with an update conditioned on that very
//! resourceVersion, so of two contenders one wins.

use super::api::{api_error, is_status, owner_ref};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the holder renews.
pub(super) const RENEW: Duration = Duration::from_secs(5);
/// A lease not renewed for this long is free.
pub(super) const STALE: Duration = Duration::from_secs(15);

/// This orchestrator's hold on a run.
pub(super) struct Lease {
    api: Api<ConfigMap>,
    pub name: String,
    pub uid: String,
    holder: String,
    /// Another orchestrator took the run, or the ConfigMap was deleted.
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// What the owner ConfigMap says.
pub(super) struct OwnerObject<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub run_id: &'a str,
    pub shards: usize,
    /// This orchestrator's own pod, when it runs in one: it owns the
    /// ConfigMap, so the garbage collector deletes the run with it.
    pub owner_pod: Option<Value>,
}

impl Lease {
    /// Create the owner ConfigMap holding the lease, or take a stale one over;
    /// an error when a live orchestrator holds it.
    pub async fn acquire(client: &Client, ns: &str, o: OwnerObject<'_>) -> Result<Lease> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let holder = format!(
            "{}-{:08x}",
            crate::work::worker::default_process_name(),
            rand_u32()
        );
        let object = |resource_version: Option<String>, renewals: u64| -> Result<ConfigMap> {
            let mut meta = json!({ "name": o.name, "namespace": ns, "labels": o.labels });
            if let Some(pod) = &o.owner_pod {
                meta["ownerReferences"] = json!([pod]);
            }
            if let Some(rv) = resource_version {
                meta["resourceVersion"] = json!(rv);
            }
            Ok(serde_json::from_value(json!({
                "metadata": meta,
                "data": {
                    "run": o.run_id,
                    "shards": o.shards.to_string(),
                    "holder": holder,
                    "renewals": renewals.to_string(),
                },
            }))?)
        };
        for _ in 0..40 {
            match api.create(&PostParams::default(), &object(None, 0)?).await {
                Ok(created) => return Ok(Lease::start(api, o.name, created, holder)),
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(api_error(e, "create", "configmaps", ns)),
            }
            let Some(found) = api
                .get_opt(o.name)
                .await
                .map_err(|e| api_error(e, "get", "configmaps", ns))?
            else {
                continue;
            };
            if found.metadata.deletion_timestamp.is_some() {
                // The ConfigMap of an earlier run being deleted.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let other = found
                .data
                .as_ref()
                .and_then(|d| d.get("holder").cloned())
                .unwrap_or_else(|| "?".into());
            let version = found.metadata.resource_version.clone();
            tracing::info!(
                "run {} has an owner ConfigMap `{}` (holder {other}); waiting up to {}s to see whether it is alive",
                o.run_id,
                o.name,
                STALE.as_secs()
            );
            let waited = std::time::Instant::now();
            let mut gone = false;
            while waited.elapsed() < STALE {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match api
                    .get_opt(o.name)
                    .await
                    .map_err(|e| api_error(e, "get", "configmaps", ns))?
                {
                    None => {
                        gone = true;
                        break;
                    }
                    Some(now) if now.metadata.resource_version != version => bail!(
                        "run {} is being run by another orchestrator (`{other}`, which holds the ConfigMap `{}` \
                         in namespace `{ns}` and renewed it just now): wait for it to finish, or stop it",
                        o.run_id,
                        o.name
                    ),
                    Some(_) => {}
                }
            }
            if gone {
                continue;
            }
            let renewals = found
                .data
                .as_ref()
                .and_then(|d| d.get("renewals")?.parse::<u64>().ok())
                .unwrap_or(0);
            match api
                .replace(
                    o.name,
                    &PostParams::default(),
                    &object(version, renewals + 1)?,
                )
                .await
            {
                Ok(taken) => {
                    tracing::warn!(
                        "run {}: the orchestrator `{other}` stopped renewing its lease; taking the run over",
                        o.run_id
                    );
                    return Ok(Lease::start(api, o.name, taken, holder));
                }
                Err(e) if is_status(&e, 409) => bail!(
                    "run {}: another orchestrator took the run over at the same moment (ConfigMap `{}`)",
                    o.run_id,
                    o.name
                ),
                Err(e) => return Err(api_error(e, "update", "configmaps", ns)),
            }
        }
        bail!(
            "cannot create the ConfigMap `{}` in namespace `{ns}`: it keeps being deleted and recreated",
            o.name
        )
    }

    fn start(api: Api<ConfigMap>, name: &str, cm: ConfigMap, holder: String) -> Lease {
        let uid = cm.metadata.uid.clone().unwrap_or_default();
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            api.clone(),
            name.to_owned(),
            holder.clone(),
            lost.clone(),
        ));
        Lease {
            api,
            name: name.to_owned(),
            uid,
            holder,
            lost,
            renewer,
        }
    }

    /// The ownerReference that makes an object belong to the run.
    pub fn owner_ref(&self) -> Value {
        owner_ref("v1", "ConfigMap", &self.name, &self.uid)
    }

    /// `Err` once this orchestrator no longer holds the run.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            bail!(
                "this orchestrator lost its lease on the run (the ConfigMap `{}` was deleted or taken over): \
                 stopping without touching the run's pods",
                self.name
            );
        }
        Ok(())
    }

    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::Relaxed)
    }

    /// Stop renewing and delete the ConfigMap (so, through the garbage
    /// collector, whatever it still owns), if it is still ours.
    pub async fn release(&self) -> Result<()> {
        self.renewer.abort();
        if !self.held() {
            return Ok(());
        }
        let mine = self
            .api
            .get_opt(&self.name)
            .await
            .context("cannot read the owner ConfigMap")?
            .is_some_and(|cm| {
                cm.data.and_then(|d| d.get("holder").cloned()).as_deref() == Some(&self.holder)
            });
        if !mine {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match self.api.delete(&self.name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).context("cannot delete the owner ConfigMap"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renew every [`RENEW`] until the ConfigMap is gone or someone else holds it.
async fn renew(api: Api<ConfigMap>, name: String, holder: String, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(RENEW).await;
        let cm = match api.get_opt(&name).await {
            Ok(Some(cm)) => cm,
            Ok(None) => {
                tracing::error!("the run's owner ConfigMap `{name}` was deleted");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!("cannot renew the lease on `{name}`: {e}");
                continue;
            }
        };
        let mut data = cm.data.clone().unwrap_or_default();
        if data.get("holder") != Some(&holder) {
            tracing::error!(
                "another orchestrator (`{}`) took over the run's ConfigMap `{name}`",
                data.get("holder").map_or("?", String::as_str)
            );
            lost.store(true, Ordering::Relaxed);
            return;
        }
        let renewals = data
            .get("renewals")
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0);
        data.insert("renewals".into(), (renewals + 1).to_string());
        let mut next = cm;
        next.data = Some(data);
        match api.replace(&name, &PostParams::default(), &next).await {
            Ok(_) => {}
            // Changed under us: the next round reads it again.
            Err(e) if is_status(&e, 409) => {}
            Err(e) => tracing::warn!("cannot renew the lease on `{name}`: {e}"),
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    use std::io::Read;
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_le_bytes(b) ^ std::process::id()
}
