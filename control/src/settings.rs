//! What the control plane is configured with: resources, their roles and
//! policies per resource and per role. The binary builds these from the YAML config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `Control::open` needs.
#[derive(Clone, Debug)]
pub struct ControlSettings {
    /// Directory of the embedded store (`portcullis.db`), the audit log and `admin.token`.
    pub data_dir: PathBuf,
    /// A PostgreSQL store's connection URL, shared by several control
    /// replicas; `None` keeps the store in `data_dir`.
    pub store_postgres: Option<portcullis_protocol::secret::Secret<String>>,
    /// The resources engineers may request, in config order.
    pub resources: Vec<ResourceSettings>,
    /// Address of the Postgres listener as engineers reach it, e.g. `127.0.0.1:6432`.
    pub gateway_postgres: Option<String>,
    /// Address of the SSH listener as engineers reach it.
    pub gateway_ssh: Option<String>,
    /// Webhooks, Slack, and chat approvals.
    pub notifications: crate::NotifySettings,
    /// Remote proxies allowed to follow the feed and ship audit events.
    pub proxies: Vec<crate::ProxyCredential>,
}

/// One resource: its name, kind, role names and policy.
#[derive(Clone, Debug)]
pub struct ResourceSettings {
    /// What engineers type, e.g. `orders`.
    pub name: String,
    /// Postgres or SSH.
    pub kind: ResourceKind,
    /// Role names (credentials stay with the proxy).
    pub roles: Vec<String>,
    /// Who may request and approve, and for how long.
    pub policy: Policy,
    /// Whole policies of roles that override some of the resource's fields
    /// (already merged onto `policy`); roles not here follow `policy`.
    pub role_policies: BTreeMap<String, Policy>,
}

/// The protocol a resource speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A PostgreSQL database.
    Postgres,
    /// An SSH server.
    Ssh,
}

impl ResourceKind {
    /// `postgres` or `ssh`, as the config and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Ssh => "ssh",
        }
    }
}

/// Access policy of a resource, or of one of its roles.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Who may request; `None`: any user.
    pub requesters: Option<Principals>,
    /// Who may approve; `None`: nobody (only auto-approve rules and break-glass
    /// grant access). The admin right alone never approves.
    pub approvers: Option<Principals>,
    /// Distinct approvals needed, 1 or more.
    pub approvals_required: u32,
    /// Shortest grant that may be requested.
    pub min_duration: Option<Duration>,
    /// Longest grant, extensions included.
    pub max_duration: Duration,
    /// Length of a grant when the request names none.
    pub default_duration: Duration,
    /// Whether a reason is needed, and its shape.
    pub reason: ReasonRule,
    /// Rules that approve matching requests at once.
    pub auto_approve: Vec<AutoApprove>,
    /// How long a request may wait unanswered before it expires; `None`: forever.
    pub pending_ttl: Option<Duration>,
    /// Further approvers who may approve once a request has waited this long, in order.
    pub escalation: Vec<Escalation>,
    /// Who may grant themselves access at once, and for how long.
    pub break_glass: Option<BreakGlass>,
}

/// How long a request waits for an answer when the policy does not say.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            requesters: None,
            approvers: None,
            approvals_required: 1,
            min_duration: None,
            max_duration: Duration::from_secs(8 * 3600),
            default_duration: Duration::from_secs(3600),
            reason: ReasonRule::Optional,
            auto_approve: Vec::new(),
            pending_ttl: Some(DEFAULT_PENDING_TTL),
            escalation: Vec::new(),
            break_glass: None,
        }
    }
}

/// A set of people: named users and members of named groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principals {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

/// Whether a request needs a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReasonRule {
    /// A reason may be given.
    Optional,
    /// A non-blank reason is needed.
    Required,
    /// A reason matching this regular expression (e.g. a ticket id) is needed.
    Pattern(String),
}

/// Approves at once a request by these users or groups for at most `max_duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoApprove {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// Longest request this rule approves.
    pub max_duration: Duration,
}

/// One step of an escalation chain: once a request has waited `after`
/// unanswered, `approvers` may approve it too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// Time since the request was made.
    pub after: Duration,
    /// The next approvers.
    pub approvers: Principals,
}

/// Break-glass: a self-grant, at once, with a mandatory reason and a short cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlass {
    /// Who may break the glass.
    pub who: Principals,
    /// Longest self-grant.
    pub max_duration: Duration,
}
