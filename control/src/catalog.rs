//! The configured resources, checked once at start and held with their reason
//! patterns compiled.

use regex_lite::Regex;
use std::collections::BTreeMap;

use crate::error::{ApiError, ControlError};
use crate::settings::{Policy, ReasonRule, ResourceSettings};

/// One resource with its policies ready to apply.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    /// Name, kind, roles and policies as configured.
    pub settings: ResourceSettings,
    /// Every `ReasonRule::Pattern` of its policies, compiled, by pattern.
    patterns: BTreeMap<String, Regex>,
}

impl Resource {
    /// Checks one resource's settings and compiles its patterns.
    pub fn new(settings: ResourceSettings) -> Result<Resource, ControlError> {
        let name = &settings.name;
        if settings.roles.is_empty() {
            return Err(ControlError::NoRoles { resource: name.clone() });
        }
        let mut patterns = BTreeMap::new();
        let policies =
            std::iter::once(("", &settings.policy)).chain(settings.role_policies.iter().map(|(r, p)| (r.as_str(), p)));
        for (role, p) in policies {
            // A role's errors name it, so the operator finds the override at fault.
            let at = if role.is_empty() {
                name.clone()
            } else {
                format!("{name} (role {role})")
            };
            check_policy(&at, p)?;
            if let ReasonRule::Pattern(pattern) = &p.reason {
                let re = Regex::new(pattern).map_err(|e| ControlError::BadReasonPattern {
                    resource: at.clone(),
                    pattern: pattern.clone(),
                    error: e.to_string(),
                })?;
                patterns.insert(pattern.clone(), re);
            }
        }
        Ok(Resource { settings, patterns })
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The policy of `role`: its override, or the resource's.
    pub fn policy(&self, role: &str) -> &Policy {
        self.settings.role_policies.get(role).unwrap_or(&self.settings.policy)
    }

    /// Every policy of the resource: its own, then its roles' overrides.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        std::iter::once(&self.settings.policy).chain(self.settings.role_policies.values())
    }

    /// The compiled form of a reason pattern of this resource's policies.
    pub fn pattern(&self, pattern: &str) -> Option<&Regex> {
        self.patterns.get(pattern)
    }
}

/// What the types alone cannot say about one policy.
fn check_policy(at: &str, p: &Policy) -> Result<(), ControlError> {
    if p.approvals_required == 0 {
        return Err(ControlError::NoApprovals {
            resource: at.to_owned(),
        });
    }
    if p.default_duration > p.max_duration {
        return Err(ControlError::DefaultOverMax {
            resource: at.to_owned(),
            default: p.default_duration,
            max: p.max_duration,
        });
    }
    if let Some(min) = p.min_duration.filter(|min| *min > p.max_duration) {
        return Err(ControlError::MinOverMax {
            resource: at.to_owned(),
            min,
            max: p.max_duration,
        });
    }
    if p.escalation
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.after >= b.after))
    {
        return Err(ControlError::EscalationOrder {
            resource: at.to_owned(),
        });
    }
    Ok(())
}

/// All resources by name, in config order for listings.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    by_name: BTreeMap<String, usize>,
    list: Vec<Resource>,
}

impl Catalog {
    /// Checks every resource; names must be unique.
    pub fn new(resources: Vec<ResourceSettings>) -> Result<Catalog, ControlError> {
        let mut catalog = Catalog::default();
        for settings in resources {
            if catalog.by_name.contains_key(&settings.name) {
                return Err(ControlError::DuplicateResource { name: settings.name });
            }
            catalog.by_name.insert(settings.name.clone(), catalog.list.len());
            catalog.list.push(Resource::new(settings)?);
        }
        Ok(catalog)
    }

    /// The resource of this name, if configured.
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.by_name.get(name).and_then(|&i| self.list.get(i))
    }

    /// The resource of a new request, or 400 naming it.
    pub fn lookup(&self, name: &str) -> Result<&Resource, ApiError> {
        self.get(name).ok_or_else(|| ApiError::UnknownResource {
            name: name.to_owned(),
            known: self.names(),
        })
    }

    /// The resource of a stored request or grant, or 409 when it left the config.
    pub fn existing(&self, name: &str) -> Result<&Resource, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::ResourceGone { name: name.to_owned() })
    }

    /// All resources in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.list.iter()
    }

    fn names(&self) -> String {
        if self.list.is_empty() {
            return "none".to_owned();
        }
        self.list.iter().map(Resource::name).collect::<Vec<_>>().join(", ")
    }
}
