//! Where an SSH session's grant is checked: the login name is resolved
//! against the configured resources, then the grant table answers yes (with
//! the grant) or why not, in words the engineer reads on stderr.

use portcullis_protocol::feed::GrantEntry;

use super::refusal::Refusal;
use super::target::LoginName;
use crate::Proxy;
use crate::clock::now_millis;
use crate::grants::check::check;
use crate::grants::wording::role_hint;
use crate::settings::{Resource, Role, SshTarget, Target};

/// A session allowed to start.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The resource.
    pub resource: Resource,
    /// Where it is.
    pub target: SshTarget,
    /// Upstream credentials to use.
    pub role: Role,
    /// The grant that admits the session, as of now.
    pub grant: GrantEntry,
}

/// Decides whether the authenticated `name.user` may reach `name.resource` now.
pub fn admit(proxy: &Proxy, name: &LoginName<'_>) -> Result<Admitted, Refusal> {
    // Fail closed: grants held may be out of date, so nothing new starts on them.
    if let Some(silent) = proxy.contact.refusal() {
        return Err(Refusal::ControlPlaneSilent { silent });
    }
    let Some(wanted) = name.resource else {
        return Err(Refusal::NoTarget);
    };
    let Some(resource) = proxy.settings.resources.iter().find(|r| r.name == wanted) else {
        return Err(Refusal::UnknownResource {
            name: wanted.to_owned(),
        });
    };
    let Target::Ssh(target) = &resource.target else {
        return Err(Refusal::NotSsh {
            name: wanted.to_owned(),
        });
    };
    let unknown_role = |role: &str| Refusal::UnknownRole {
        resource: resource.name.clone(),
        role: role.to_owned(),
        roles: resource.roles.iter().map(|r| r.name.clone()).collect(),
    };
    if let Some(r) = name.role
        && resource.role(r).is_none()
    {
        return Err(unknown_role(r));
    }
    let (grants, pending) = proxy.grants.lookup(name.user, &resource.name);
    let grant = check(&grants, &pending, name.role, now_millis()).map_err(|denied| Refusal::Denied {
        denied: Box::new(denied),
        resource: resource.name.clone(),
        role_hint: role_hint(resource, name.role),
        asked: name.role.map(str::to_owned),
        user: name.user.to_owned(),
    })?;
    let Some(role) = resource.role(&grant.role) else {
        return Err(unknown_role(&grant.role));
    };
    Ok(Admitted {
        target: target.clone(),
        role: role.clone(),
        resource: resource.clone(),
        grant,
    })
}
