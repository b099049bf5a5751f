//! The job script the emulated host runs: working directory, environment and command,
//! every word quoted for a POSIX shell.

use std::path::Path;

/// Quotes `word` so that a POSIX shell reads it back unchanged.
pub fn shell_quote(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Variables that describe the runner's own shell rather than the command's environment.
const NOT_PASSED: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// Writes the script: `cd` into `cwd` (status 125 if it is missing there), export `env`
/// (skipping names a shell cannot hold), then `exec` the command.
pub fn job_script(cwd: &Path, env: &[(String, String)], argv: &[String]) -> String {
    let mut script = String::from("# written by vpod-kvm-host\n");
    script.push_str(&format!(
        "cd {} || exit 125\n",
        shell_quote(&cwd.to_string_lossy())
    ));
    for (name, value) in env {
        if is_shell_name(name) && !NOT_PASSED.contains(&name.as_str()) {
            script.push_str(&format!("export {name}={}\n", shell_quote(value)));
        }
    }
    script.push_str("exec");
    for word in argv {
        script.push(' ');
        script.push_str(&shell_quote(word));
    }
    script.push('\n');
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs a job script with the machine's /bin/sh, as the emulated host will.
    fn run_script(script: &str) -> std::process::Output {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env_clear()
            .output()
            .unwrap()
    }

    #[test]
    fn awkward_arguments_reach_the_command_unchanged() {
        let argv: Vec<String> = [
            "printf", "[%s]\\n", "a b", "it's", "$HOME", "*", "", "\"q\"", "x\ny",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = run_script(&job_script(Path::new("/"), &[], &argv));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "[a b]\n[it's]\n[$HOME]\n[*]\n[]\n[\"q\"]\n[x\ny]\n"
        );
    }

    #[test]
    fn environment_and_directory_are_applied() {
        let env = vec![
            ("GREETING".to_string(), "hello 'world'".to_string()),
            ("BAD-NAME".to_string(), "x".to_string()),
            ("PWD".to_string(), "/nowhere".to_string()),
        ];
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo \"$GREETING\"; pwd; env | grep -c BAD || true".to_string(),
        ];
        let out = run_script(&job_script(Path::new("/tmp"), &env, &argv));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "hello 'world'\n/tmp\n0\n"
        );
    }

    #[test]
    fn exit_status_passes_through_and_missing_directory_gives_125() {
        let argv = vec!["sh".to_string(), "-c".to_string(), "exit 7".to_string()];
        assert_eq!(
            run_script(&job_script(Path::new("/"), &[], &argv))
                .status
                .code(),
            Some(7)
        );
        let missing = run_script(&job_script(Path::new("/no/such/dir"), &[], &argv));
        assert_eq!(missing.status.code(), Some(125));
    }

    #[test]
    fn missing_command_gives_127() {
        let argv = vec!["/no/such/program".to_string()];
        assert_eq!(
            run_script(&job_script(Path::new("/"), &[], &argv))
                .status
                .code(),
            Some(127)
        );
    }
}
