//! The configured resources, checked once at start and held with their reason
//! patterns compiled.

use std::collections::BTreeMap;
use std::time::Duration;

use regex_lite::Regex;

use crate::error::{ApiError, ControlError};
use crate::settings::{ReasonRule, ResourceSettings};

/// One resource with its policy ready to apply.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    /// Name, kind, roles and policy as configured.
    pub settings: ResourceSettings,
    /// The compiled `ReasonRule::Pattern`, if any.
    pub reason_pattern: Option<Regex>,
}

impl Resource {
    /// Checks one resource's settings and compiles its pattern.
    pub fn new(settings: ResourceSettings) -> Result<Resource, ControlError> {
        let name = &settings.name;
        let p = &settings.policy;
        if settings.roles.is_empty() {
            return Err(ControlError::NoRoles { resource: name.clone() });
        }
        if p.approvals_required == 0 {
            return Err(ControlError::NoApprovals { resource: name.clone() });
        }
        if p.default_duration > p.max_duration {
            return Err(ControlError::DefaultOverMax {
                resource: name.clone(),
                default: p.default_duration,
                max: p.max_duration,
            });
        }
        if let Some(min) = p.min_duration.filter(|min| *min > p.max_duration) {
            return Err(ControlError::MinOverMax {
                resource: name.clone(),
                min,
                max: p.max_duration,
            });
        }
        let reason_pattern = match &p.reason {
            ReasonRule::Pattern(pattern) => Some(Regex::new(pattern).map_err(|e| ControlError::BadReasonPattern {
                resource: name.clone(),
                pattern: pattern.clone(),
                error: e.to_string(),
            })?),
            ReasonRule::Optional | ReasonRule::Required => None,
        };
        Ok(Resource {
            settings,
            reason_pattern,
        })
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The policy's longest grant.
    pub fn max_duration(&self) -> Duration {
        self.settings.policy.max_duration
    }
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
