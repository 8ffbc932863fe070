//! The SSH login name: `USER+RESOURCE[+ROLE]`.
//!
//! `+` is the one separator that every OpenSSH client passes through
//! unchanged: `@` ends the user part in `scp`/`rsync` targets and user names
//! may themselves contain `@` (e-mail style), while `+` appears in no user,
//! and the config refuses it in SSH resource names. So one spelling works
//! with `ssh -p 2222 alice+web1@gateway`, `scp -P 2222 f alice+web1@gateway:`,
//! `sftp -P 2222 alice+web1@gateway` and `rsync -e 'ssh -p 2222' f alice+web1@gateway:`.

/// What the login name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginName<'a> {
    /// The engineer (a Portcullis user).
    pub user: &'a str,
    /// The resource to reach; `None` when the name has no `+`.
    pub resource: Option<&'a str>,
    /// The role, when named.
    pub role: Option<&'a str>,
}

/// Splits `alice+web1+deploy` into user, resource and role; empty parts count as absent.
pub fn parse(login: &str) -> LoginName<'_> {
    let mut parts = login.splitn(3, '+');
    let user = parts.next().unwrap_or_default();
    let resource = parts.next().filter(|s| !s.is_empty());
    let role = parts.next().filter(|s| !s.is_empty());
    LoginName { user, resource, role }
}

/// How to spell the login name, for messages.
pub const SPELLING: &str = "USER+RESOURCE or USER+RESOURCE+ROLE, e.g. ssh -p PORT alice+web1@GATEWAY";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_resource_and_role() {
        assert_eq!(
            parse("alice+web1"),
            LoginName {
                user: "alice",
                resource: Some("web1"),
                role: None
            }
        );
        assert_eq!(parse("alice+web1+deploy").role, Some("deploy"));
        assert_eq!(parse("alice@corp.example+web1").user, "alice@corp.example");
        assert_eq!(parse("alice+web1+").role, None);
        assert_eq!(parse("alice").resource, None);
        assert_eq!(parse("alice+").resource, None);
        assert_eq!(parse("").user, "");
    }
}
