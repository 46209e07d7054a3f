//! The labels and the field manager that mark what Resurgo creates, so that users, GitOps
//! tools and the operator itself can tell its objects apart.

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "resurgo";

/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "resurgo";

/// The RecoveryPlan an object was created for.
pub const PLAN: &str = "resurgo.dev/plan";

/// The service of that plan an object belongs to.
pub const SERVICE: &str = "resurgo.dev/service";

/// What an object is for, in the service: `workload`, `restore`, `check`, `secret`,
/// `network-policy`.
pub const PART: &str = "resurgo.dev/part";

/// The Incident an object was created for (the copies a drill rebuilds).
pub const INCIDENT: &str = "resurgo.dev/incident";

/// The plan a drill's copy was made from.
pub const SOURCE_PLAN: &str = "resurgo.dev/source-plan";
