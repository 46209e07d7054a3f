//! What the access tests share: asking the API server who may do what (as `kubectl auth
//! can-i --as` does, through a SelfSubjectAccessReview under impersonation), and waiting for
//! AccessPolicies to be applied.

use std::{future::Future, time::Duration};

use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::wait::await_condition,
};
use resurgo::api::AccessPolicy;
use serde_json::{Value, json};

use crate::{kubectl, unique_name};

/// Whether the API server lets `user` (in `groups`) do `verb` on `resource`, in `namespace`
/// or cluster-wide.
pub fn can_i(
    user: &str,
    groups: &[&str],
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource];
    let as_user = format!("--as={user}");
    args.push(&as_user);
    let as_groups: Vec<String> = groups.iter().map(|g| format!("--as-group={g}")).collect();
    args.extend(as_groups.iter().map(String::as_str));
    let ns;
    match namespace {
        Some(namespace) => {
            ns = format!("--namespace={namespace}");
            args.push(&ns);
        }
        None => args.push("--all-namespaces"),
    }
    let output = kubectl(&args, None);
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl {}: {answer} {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    answer == "yes"
}

/// Waits until `check` holds, checking every 100 ms, for at most `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn access(
    user: &str,
    groups: &[&str],
    verb: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let (user, groups, verb, resource, ns) = (
        user.to_owned(),
        groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        verb.to_owned(),
        resource.to_owned(),
        ns.map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        can_i(&user, &groups, &verb, &resource, ns.as_deref())
    })
    .await
    .unwrap()
}

pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

pub fn policy(name: &str, spec: Value) -> AccessPolicy {
    serde_json::from_value(json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Waits until the policy's status describes its current generation and says Ready, and
/// returns it.
pub async fn ready(policies: &Api<AccessPolicy>, name: &str) -> AccessPolicy {
    let wait = await_condition(policies.clone(), name, |p: Option<&AccessPolicy>| {
        p.is_some_and(|p| {
            let status = p.status.clone().unwrap_or_default();
            status.observed_generation == p.metadata.generation
                && status.mode == Some(p.spec.mode)
                && status.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.observed_generation == p.metadata.generation
                })
        })
    });
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(Some(policy))) => policy,
        other => {
            let now = policies.get(name).await.unwrap();
            panic!(
                "accesspolicy/{name} did not become Ready: {other:?}\n{}",
                serde_json::to_string_pretty(&now.status).unwrap()
            )
        }
    }
}

pub async fn set_mode(policies: &Api<AccessPolicy>, name: &str, mode: &str) -> AccessPolicy {
    policies
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": mode}})),
        )
        .await
        .unwrap();
    ready(policies, name).await
}

/// Waits until the policy is gone (its finalizer has run).
pub async fn deleted(policies: &Api<AccessPolicy>, name: &str) {
    let Ok(Some(policy)) = policies.get_opt(name).await else {
        return;
    };
    let _ = policies.delete(name, &DeleteParams::default()).await;
    let uid = policy.uid().unwrap();
    let gone = await_condition(
        policies.clone(),
        name,
        kube::runtime::wait::conditions::is_deleted(&uid),
    );
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .expect("the policy's finalizer ran within 30 s")
        .unwrap();
}

/// The reasons and notes of the Events about a policy.
pub async fn events(client: &Client, policy: &str) -> Vec<(String, String)> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(policy)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("AccessPolicy")
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

pub async fn has_event(client: &Client, policy: &str, reason: &str, note_contains: &str) {
    eventually(
        &format!("an Event {reason} about {note_contains} on {policy}"),
        Duration::from_secs(10),
        || async {
            events(client, policy)
                .await
                .iter()
                .any(|(r, n)| r == reason && n.contains(note_contains))
        },
    )
    .await;
}
