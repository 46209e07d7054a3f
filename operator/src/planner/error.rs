//! Why a recovery plan cannot be planned. Every error names the services or tiers at fault
//! and the field to change, so that the message alone is enough to fix the plan.

use crate::api::common::DurationError;

/// One problem of a recovery plan. Planning reports all of them at once.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "spec.tiers: the plan has no tiers; add at least one, such as `life-critical` with its RTO"
    )]
    NoTiers,

    #[error(
        "{}: the tier name `{name}` is used {} times; give each tier its own name",
        .paths.join(", "), .paths.len()
    )]
    DuplicateTier { name: String, paths: Vec<String> },

    #[error(
        "{}: the service name `{name}` is used {} times; give each service its own name",
        .paths.join(", "), .paths.len()
    )]
    DuplicateService { name: String, paths: Vec<String> },

    #[error("{path}: tier `{tier}` has no services; give it at least one or remove the tier")]
    EmptyTier { tier: String, path: String },

    #[error(
        "{path}: service `{service}` is in tier `{tier}`, which is not one of spec.tiers ({})",
        .known.join(", ")
    )]
    UnknownTier {
        service: String,
        tier: String,
        path: String,
        known: Vec<String>,
    },

    #[error(
        "{path}: service `{service}` depends on `{dependency}`, but no service of the plan is named `{dependency}`"
    )]
    UnknownDependency {
        service: String,
        dependency: String,
        path: String,
    },

    #[error(
        "{path}: service `{service}` of tier `{tier}` depends on `{dependency}` of the later tier `{dependency_tier}`; a service may only depend on services of its own or an earlier tier, so move `{dependency}` to tier `{tier}` or earlier, or drop the dependency"
    )]
    LaterTierDependency {
        service: String,
        tier: String,
        dependency: String,
        dependency_tier: String,
        path: String,
    },

    /// `cycle` starts and ends with the same service; each one depends on the next.
    #[error(
        "{}: dependency cycle {} (each service depends on the next), so none of them can ever start; remove one of these dependencies",
        .paths.join(", "), .cycle.join(" -> ")
    )]
    Cycle {
        cycle: Vec<String>,
        paths: Vec<String>,
    },

    #[error("{path}: {source}")]
    InvalidDuration {
        path: String,
        #[source]
        source: DurationError,
    },
}

impl PlanError {
    /// The services this error is about (empty for errors about tiers only).
    pub fn services(&self) -> Vec<&str> {
        match self {
            Self::NoTiers
            | Self::DuplicateTier { .. }
            | Self::EmptyTier { .. }
            | Self::InvalidDuration { .. } => Vec::new(),
            Self::DuplicateService { name, .. } => vec![name],
            Self::UnknownTier { service, .. } => vec![service],
            Self::UnknownDependency {
                service,
                dependency,
                ..
            }
            | Self::LaterTierDependency {
                service,
                dependency,
                ..
            } => vec![service, dependency],
            Self::Cycle { cycle, .. } => cycle.iter().map(String::as_str).collect(),
        }
    }
}
