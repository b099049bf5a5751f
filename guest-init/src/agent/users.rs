//! A container's user from its own /etc/passwd and /etc/group, read inside its root, with
//! runc's rules: a name gives the uid, the primary gid and HOME; a uid found in passwd
//! also brings its supplementary groups; an explicit group replaces the primary gid and
//! then /etc/group adds nothing.

use super::in_root::{InRootError, RootDir};

/// The largest /etc/passwd or /etc/group the agent reads.
const MAX_DATABASE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the user {0:?} is not in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("the group {0:?} is not in the container's /etc/group")]
    UnknownGroup(String),
    #[error("the container's user database could not be read")]
    Read(#[source] InRootError),
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Lines that do not parse (comments, NIS "+" entries, garbage) are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
                home: fields.get(5).map_or(String::new(), |h| h.to_string()),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Who the container's processes run as, as requested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Looked up in /etc/passwd; replaces uid and gid.
    pub name: Option<String>,
    /// A group name or a decimal gid; replaces the primary gid.
    pub group: Option<String>,
}

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from passwd, when the user is there.
    pub home: Option<String>,
}

/// Resolves `request` against the databases' contents (None: the file does not exist).
pub fn resolve_in(
    request: &UserRequest,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Identity, UserError> {
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let entry = match &request.name {
        Some(name) => Some(
            users
                .iter()
                .find(|u| &u.name == name)
                .ok_or_else(|| UserError::UnknownUser(name.clone()))?,
        ),
        None => users.iter().find(|u| u.uid == request.uid),
    };
    let mut identity = Identity {
        uid: request.uid,
        gid: request.gid,
        additional_gids: Vec::new(),
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    };
    if let (Some(entry), Some(_)) = (entry, &request.name) {
        identity.uid = entry.uid;
        identity.gid = entry.gid;
    }
    match &request.group {
        Some(group) => {
            identity.gid = match groups.iter().find(|g| &g.name == group) {
                Some(g) => g.gid,
                None => group
                    .parse()
                    .map_err(|_| UserError::UnknownGroup(group.clone()))?,
            };
        }
        None => {
            if let Some(entry) = entry {
                identity.additional_gids = groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == &entry.name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    for gid in &request.additional_gids {
        identity.additional_gids.push(*gid);
    }
    let mut seen = std::collections::HashSet::new();
    identity.additional_gids.retain(|g| seen.insert(*g));
    Ok(identity)
}

/// Resolves `request` against the container's own /etc/passwd and /etc/group.
pub fn resolve(root: &RootDir, request: &UserRequest) -> Result<Identity, UserError> {
    let read = |path: &str| -> Result<Option<String>, UserError> {
        Ok(root
            .read_file(path, MAX_DATABASE)
            .map_err(UserError::Read)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    };
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    resolve_in(request, passwd.as_deref(), group.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken:x:notanumber:1\n\
        svc:x:200:50:service:/srv:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        staff:x:50:svc\n\
        audio:x:29: app , other\n";

    fn named(name: &str) -> UserRequest {
        UserRequest {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_name_gives_uid_gid_home_and_member_groups() {
        let id = resolve_in(&named("app"), Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29],
                home: Some("/home/app".into()),
            }
        );
    }

    #[test]
    fn an_unknown_name_is_an_error() {
        assert!(matches!(
            resolve_in(&named("ghost"), Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownUser(n)) if n == "ghost"
        ));
        assert!(matches!(
            resolve_in(&named("app"), None, None),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve_in(&named("broken"), Some(PASSWD), None),
            Err(UserError::UnknownUser(_))
        ));
    }

    #[test]
    fn a_numeric_user_keeps_its_ids_and_gains_its_groups() {
        let request = UserRequest {
            uid: 200,
            gid: 7,
            additional_gids: vec![99, 50],
            ..Default::default()
        };
        let id = resolve_in(&request, Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid), (200, 7));
        assert_eq!(id.additional_gids, [50, 99]);
        assert_eq!(id.home.as_deref(), Some("/srv"));
        let unknown = UserRequest {
            uid: 4242,
            gid: 1,
            ..Default::default()
        };
        let id = resolve_in(&unknown, Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid, id.additional_gids.len()), (4242, 1, 0));
        assert_eq!(id.home, None);
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_and_adds_no_groups() {
        let request = UserRequest {
            group: Some("staff".into()),
            ..named("app")
        };
        let id = resolve_in(&request, Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        assert!(id.additional_gids.is_empty());
        let numeric = UserRequest {
            group: Some("4000".into()),
            ..named("app")
        };
        assert_eq!(
            resolve_in(&numeric, Some(PASSWD), Some(GROUP)).unwrap().gid,
            4000
        );
        let unknown = UserRequest {
            group: Some("nogroup".into()),
            ..named("app")
        };
        assert!(matches!(
            resolve_in(&unknown, Some(PASSWD), Some(GROUP)),
            Err(UserError::UnknownGroup(g)) if g == "nogroup"
        ));
    }
}
