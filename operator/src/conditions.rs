//! kstatus-style conditions (`Ready`, `Progressing`, `Stalled`) shared by every controller's
//! status, so `kubectl wait` and Flux read every kind the same way.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Conditions with `lastTransitionTime` kept where the status did not change, as the API
/// conventions ask.
pub fn conditions<const N: usize>(
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    wanted: [(&str, bool, &str, &str); N],
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let status = if status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}
