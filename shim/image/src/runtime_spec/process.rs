//! The container's process: the image config (Env, Entrypoint, Cmd, WorkingDir, User)
//! merged with what the request overrides, with Docker's rules.

use crate::ImageConfig;

/// Why a container's process cannot be decided.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("neither the image nor the request names a command to run")]
    NoCommand,
    #[error("the environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("the working directory {0:?} is not absolute")]
    RelativeWorkdir(String),
    #[error("the user {0:?} is not USER[:GROUP], each a name or a number")]
    BadUser(String),
}

/// What a request changes in the image's process; `None` and empty keep the image's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessOverrides {
    /// Replaces the image's Entrypoint, and then also its Cmd (as `docker run --entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// "KEY=VALUE", added to the image's Env; a key already there is replaced in place.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// "USER[:GROUP]", each a number or a name the guest looks up in the container's
    /// /etc/passwd and /etc/group.
    pub user: Option<String>,
}

/// A user as the request or the image config names it: numbers are used as they are,
/// names are resolved by the agent inside the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    /// Replaces uid and gid (the user's primary group) when set.
    pub name: Option<String>,
    /// A group name; replaces gid when set.
    pub group: Option<String>,
}

/// The process to start, before it becomes the runtime spec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// A user name for the agent to resolve (then uid and gid are not used).
    pub user_name: Option<String>,
    /// A group name for the agent to resolve (then gid is not used).
    pub group_name: Option<String>,
}

/// Merges `image` with `overrides`.
pub fn merge_process(
    image: &ImageConfig,
    overrides: &ProcessOverrides,
) -> Result<MergedProcess, MergeError> {
    let (entrypoint, image_cmd) = match &overrides.entrypoint {
        Some(entrypoint) => (entrypoint.clone(), Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let cmd = if overrides.command.is_empty() {
        image_cmd
    } else {
        overrides.command.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(MergeError::NoCommand);
    }

    let mut env: Vec<String> = Vec::new();
    for entry in image.env.iter().chain(&overrides.env) {
        let Some((key, _)) = entry.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(MergeError::BadEnv(entry.clone()));
        };
        let same_key = |e: &String| e.split_once('=').is_some_and(|(k, _)| k == key);
        match env.iter_mut().find(|e| same_key(e)) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }

    let cwd = match overrides.workdir.as_deref().unwrap_or(&image.working_dir) {
        "" => "/".to_string(),
        dir if dir.starts_with('/') => dir.to_string(),
        dir => return Err(MergeError::RelativeWorkdir(dir.to_string())),
    };

    let user = parse_user_spec(overrides.user.as_deref().unwrap_or(&image.user))?;
    Ok(MergedProcess {
        args,
        env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        user_name: user.name,
        group_name: user.group,
    })
}

/// "USER[:GROUP]": "" and "root" are uid 0; numbers are ids; anything else is a name. A
/// numeric user without a group gets gid 0 (Docker's rule for a user not in /etc/passwd).
pub fn parse_user_spec(user: &str) -> Result<UserSpec, MergeError> {
    let bad = || MergeError::BadUser(user.to_string());
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let plain_name = |name: &str| {
        !name.is_empty()
            && name.len() <= 256
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != ':' && c != '/')
    };
    let mut spec = UserSpec::default();
    match user_part {
        "" | "root" => {}
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => {
            spec.uid = digits.parse().map_err(|_| bad())?;
        }
        name if plain_name(name) => spec.name = Some(name.to_string()),
        _ => return Err(bad()),
    }
    match group_part {
        None | Some("root") => {}
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            spec.gid = digits.parse().map_err(|_| bad())?;
            if spec.name.is_some() {
                // The agent ignores gid for a named user: carry the number as its group.
                spec.group = Some(digits.to_string());
            }
        }
        Some(name) if plain_name(name) => spec.group = Some(name.to_string()),
        Some(_) => return Err(bad()),
    }
    if group_part == Some("root") && spec.name.is_some() {
        spec.group = Some("0".to_string());
    }
    Ok(spec)
}

/// "" and "root" are 0:0; "UID" is UID:0 (what Docker gives a user not in /etc/passwd);
/// "UID:GID" is itself.
pub fn parse_user(user: &str) -> Result<(u32, u32), MergeError> {
    let bad = || MergeError::BadUser(user.to_string());
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid = match uid {
        "" | "root" => 0,
        digits => digits.parse().map_err(|_| bad())?,
    };
    let gid = match gid {
        None | Some("root") => 0,
        Some(digits) => digits.parse().map_err(|_| bad())?,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: words(&["PATH=/bin", "A=image"]),
            entrypoint: words(&["/entry"]),
            cmd: words(&["--default"]),
            working_dir: "/srv".into(),
            user: "100:101".into(),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn no_overrides_give_the_image_process() {
        let p = merge_process(&image(), &ProcessOverrides::default()).unwrap();
        assert_eq!(p.args, words(&["/entry", "--default"]));
        assert_eq!(p.env, words(&["PATH=/bin", "A=image"]));
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/srv", 100, 101));
    }

    #[test]
    fn a_command_replaces_cmd_and_keeps_the_entrypoint() {
        let o = ProcessOverrides {
            command: words(&["x", "y"]),
            ..Default::default()
        };
        assert_eq!(
            merge_process(&image(), &o).unwrap().args,
            words(&["/entry", "x", "y"])
        );
    }

    #[test]
    fn an_entrypoint_override_drops_the_image_cmd() {
        let o = ProcessOverrides {
            entrypoint: Some(words(&["sh"])),
            ..Default::default()
        };
        assert_eq!(merge_process(&image(), &o).unwrap().args, words(&["sh"]));
    }

    #[test]
    fn env_overrides_replace_in_place_and_append_new_keys() {
        let o = ProcessOverrides {
            env: words(&["A=request", "B=x=y"]),
            ..Default::default()
        };
        assert_eq!(
            merge_process(&image(), &o).unwrap().env,
            words(&["PATH=/bin", "A=request", "B=x=y"])
        );
    }

    #[test]
    fn workdir_and_user_overrides_win() {
        let o = ProcessOverrides {
            workdir: Some("/tmp".into()),
            user: Some("1000".into()),
            ..Default::default()
        };
        let p = merge_process(&image(), &o).unwrap();
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/tmp", 1000, 0));
    }

    #[test]
    fn an_empty_image_defaults_to_root_in_slash() {
        let o = ProcessOverrides {
            command: words(&["true"]),
            ..Default::default()
        };
        let p = merge_process(&ImageConfig::default(), &o).unwrap();
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/", 0, 0));
    }

    #[test]
    fn bad_requests_are_refused() {
        let none = ProcessOverrides::default();
        assert_eq!(
            merge_process(&ImageConfig::default(), &none),
            Err(MergeError::NoCommand)
        );
        let bad_env = ProcessOverrides {
            env: words(&["NOEQUALS"]),
            ..Default::default()
        };
        assert!(matches!(
            merge_process(&image(), &bad_env),
            Err(MergeError::BadEnv(_))
        ));
        let relative = ProcessOverrides {
            workdir: Some("srv".into()),
            ..Default::default()
        };
        assert!(matches!(
            merge_process(&image(), &relative),
            Err(MergeError::RelativeWorkdir(_))
        ));
        assert!(matches!(parse_user("nobody"), Err(MergeError::BadUser(_))));
        assert!(matches!(parse_user("1:x"), Err(MergeError::BadUser(_))));
    }

    #[test]
    fn user_specs_take_names_and_numbers() {
        let spec = |uid, gid, name: Option<&str>, group: Option<&str>| UserSpec {
            uid,
            gid,
            name: name.map(str::to_string),
            group: group.map(str::to_string),
        };
        assert_eq!(parse_user_spec(""), Ok(spec(0, 0, None, None)));
        assert_eq!(parse_user_spec("root"), Ok(spec(0, 0, None, None)));
        assert_eq!(parse_user_spec("7:8"), Ok(spec(7, 8, None, None)));
        assert_eq!(parse_user_spec("app"), Ok(spec(0, 0, Some("app"), None)));
        assert_eq!(
            parse_user_spec("app:staff"),
            Ok(spec(0, 0, Some("app"), Some("staff")))
        );
        assert_eq!(
            parse_user_spec("app:50"),
            Ok(spec(0, 50, Some("app"), Some("50")))
        );
        assert_eq!(
            parse_user_spec("app:root"),
            Ok(spec(0, 0, Some("app"), Some("0")))
        );
        assert_eq!(
            parse_user_spec("1000:staff"),
            Ok(spec(1000, 0, None, Some("staff")))
        );
        for bad in ["a b", "app:", "x/y", "-x", "1:2:3", "app:a b"] {
            assert!(
                matches!(parse_user_spec(bad), Err(MergeError::BadUser(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_named_image_user_reaches_the_merged_process() {
        let image = ImageConfig {
            user: "www-data".into(),
            ..image()
        };
        let p = merge_process(&image, &ProcessOverrides::default()).unwrap();
        assert_eq!(p.user_name.as_deref(), Some("www-data"));
        let o = ProcessOverrides {
            user: Some("app:staff".into()),
            ..Default::default()
        };
        let p = merge_process(&image, &o).unwrap();
        assert_eq!(
            (p.user_name.as_deref(), p.group_name.as_deref()),
            (Some("app"), Some("staff"))
        );
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user(""), Ok((0, 0)));
        assert_eq!(parse_user("root"), Ok((0, 0)));
        assert_eq!(parse_user("7"), Ok((7, 0)));
        assert_eq!(parse_user("7:8"), Ok((7, 8)));
    }
}
