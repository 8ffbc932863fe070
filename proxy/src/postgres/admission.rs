//! Where a grant is checked: `dbname=RESOURCE[@ROLE]` is resolved against the
//! configured resources, then the grant table answers yes (with the grant) or
//! why not.

use portcullis_protocol::feed::GrantEntry;

use super::refusal::Refusal;
use crate::Proxy;
use crate::clock::now_millis;
use crate::grants::check::check;
use crate::grants::wording::role_hint;
use crate::settings::{PostgresTarget, Resource, Role, Target};

/// A session allowed to start.
pub struct Admitted {
    /// The resource.
    pub resource: Resource,
    /// Where it is.
    pub target: PostgresTarget,
    /// Upstream credentials to use.
    pub role: Role,
    /// The grant that admits the session, as of now.
    pub grant: GrantEntry,
}

/// Splits `orders@read` into the resource and the chosen role.
pub fn split_dbname(dbname: &str) -> (&str, Option<&str>) {
    match dbname.split_once('@') {
        Some((resource, role)) if !role.is_empty() => (resource, Some(role)),
        Some((resource, _)) => (resource, None),
        None => (dbname, None),
    }
}

/// Decides whether `user` may open a session on `dbname` now.
pub fn admit(proxy: &Proxy, user: &str, dbname: &str) -> Result<Admitted, Refusal> {
    // Fail closed: grants held may be out of date, so nothing new starts on them.
    if let Some(silent) = proxy.contact.refusal() {
        return Err(Refusal::ControlPlaneSilent { silent });
    }
    let (name, role) = split_dbname(dbname);
    let Some(resource) = proxy.settings.resources.iter().find(|r| r.name == name) else {
        return Err(Refusal::UnknownResource { name: name.to_owned() });
    };
    let Target::Postgres(target) = &resource.target else {
        return Err(Refusal::NotPostgres { name: name.to_owned() });
    };
    if let Some(r) = role
        && resource.role(r).is_none()
    {
        return Err(Refusal::UnknownRole {
            resource: resource.name.clone(),
            role: r.to_owned(),
            roles: resource.roles.iter().map(|r| r.name.clone()).collect(),
        });
    }
    let (grants, pending) = proxy.grants.lookup(user, &resource.name);
    let grant = check(&grants, &pending, role, now_millis()).map_err(|denied| Refusal::Denied {
        denied: Box::new(denied),
        resource: resource.name.clone(),
        role_hint: role_hint(resource, role),
        asked: role.map(str::to_owned),
        user: user.to_owned(),
    })?;
    let Some(role) = resource.role(&grant.role) else {
        return Err(Refusal::UnknownRole {
            resource: resource.name.clone(),
            role: grant.role.clone(),
            roles: resource.roles.iter().map(|r| r.name.clone()).collect(),
        });
    };
    Ok(Admitted {
        target: target.clone(),
        role: role.clone(),
        resource: resource.clone(),
        grant,
    })
}

#[cfg(test)]
mod tests {
    use super::split_dbname;

    #[test]
    fn role_suffix() {
        assert_eq!(split_dbname("orders"), ("orders", None));
        assert_eq!(split_dbname("orders@read"), ("orders", Some("read")));
        assert_eq!(split_dbname("orders@"), ("orders", None));
    }
}
