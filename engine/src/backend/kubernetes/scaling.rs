//! Scaling decisions and what a pod's status means: pure functions, tested
//! without a cluster.

use k8s_openapi::api::core::v1::Pod;

/// Waiting reasons that mean a container will not start by itself.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How many worker pods the queue can use: at least `minimum`, at most
/// `maximum`, never more than the shards still to run (and at least one
/// while any is). Shards being run count as still to run: a pod that
/// finishes one takes the next.
pub(super) fn wanted(minimum: usize, maximum: usize, remaining: usize) -> usize {
    if remaining == 0 {
        return 0;
    }
    maximum.min(minimum.max(remaining)).min(remaining).max(1)
}

/// A worker pod, as its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PodState {
    /// Not running yet; `Some(why)` when it cannot start by itself (the
    /// image cannot be pulled, no node can take it).
    Pending(Option<String>),
    Running,
    Succeeded,
    /// Ended badly: why (exit code, OOMKilled, evicted).
    Failed(String),
}

/// What `pod`'s status says.
pub(super) fn observe(pod: &Pod) -> PodState {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let Some(status) = &pod.status else {
        return PodState::Pending(None);
    };
    let state = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.clone())
        .unwrap_or_default();
    match status.phase.as_deref().unwrap_or("Pending") {
        "Succeeded" => PodState::Succeeded,
        "Running" => PodState::Running,
        "Failed" => PodState::Failed(match &state.terminated {
            Some(t) => format!(
                "worker pod {name} exited with code {}{}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                t.message
                    .as_deref()
                    .filter(|m| !m.trim().is_empty())
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default()
            ),
            None => format!(
                "worker pod {name} failed: {}{}",
                status.reason.as_deref().unwrap_or("Failed"),
                status
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        }),
        _ => {
            let waiting = state.waiting.as_ref().and_then(|w| {
                let reason = w.reason.as_deref()?;
                STUCK_REASONS
                    .contains(&reason)
                    .then(|| format!("{reason}: {}", w.message.as_deref().unwrap_or("").trim()))
            });
            let unschedulable = || {
                status.conditions.as_ref()?.iter().find_map(|c| {
                    (c.type_ == "PodScheduled" && c.status == "False").then(|| {
                        format!(
                            "{}: {}",
                            c.reason.as_deref().unwrap_or("Unschedulable"),
                            c.message.as_deref().unwrap_or("").trim()
                        )
                    })
                })
            };
            PodState::Pending(waiting.or_else(unschedulable))
        }
    }
}

/// Whether a refused pod creation is the namespace's ResourceQuota: then
/// the pool stays at the size it has, it does not fail.
pub(super) fn is_quota(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pool_follows_the_queue_between_minimum_and_maximum() {
        assert_eq!(wanted(1, 3, 6), 3, "six shards left: the maximum");
        assert_eq!(wanted(1, 3, 2), 2, "never more pods than shards");
        assert_eq!(wanted(2, 3, 1), 1, "one shard left");
        assert_eq!(wanted(1, 3, 0), 0, "done");
        assert_eq!(wanted(3, 5, 10), 5);
        assert_eq!(wanted(3, 5, 4), 4);
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "status": status })).unwrap()
    }

    #[test]
    fn a_pod_status_says_why_it_cannot_start_or_ended() {
        let oom = pod(
            json!({ "phase": "Failed", "containerStatuses": [{ "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } }] }),
        );
        assert_eq!(
            observe(&oom),
            PodState::Failed("worker pod p exited with code 137 (OOMKilled)".into())
        );
        let pull = pod(
            json!({ "phase": "Pending", "containerStatuses": [{ "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ErrImagePull", "message": "no such image" } } }] }),
        );
        assert_eq!(
            observe(&pull),
            PodState::Pending(Some("ErrImagePull: no such image".into()))
        );
        let unsched = pod(
            json!({ "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu." }] }),
        );
        assert_eq!(
            observe(&unsched),
            PodState::Pending(Some(
                "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.".into()
            ))
        );
        assert_eq!(
            observe(&pod(json!({ "phase": "Running" }))),
            PodState::Running
        );
    }
}
