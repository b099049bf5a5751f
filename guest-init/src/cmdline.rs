//! What vpod-init reads from the kernel command line.

/// Settings carried as `vpod.KEY=VALUE` words on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub hostname: String,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            hostname: "vpod".to_string(),
        }
    }
}

/// Parses `/proc/cmdline`. Unknown words are the kernel's business and are ignored; a
/// hostname that is not a valid one keeps the default.
pub fn parse(cmdline: &str) -> InitConfig {
    let mut config = InitConfig::default();
    for word in cmdline.split_whitespace() {
        if word == "--" {
            break;
        }
        if let Some(name) = word.strip_prefix("vpod.hostname=") {
            if valid_hostname(name) {
                config.hostname = name.to_string();
            }
        }
    }
    config
}

/// RFC 1123 host name: 1-64 bytes of letters, digits, '-' and '.', no leading '-' or '.'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_comes_from_the_command_line() {
        let c = parse("console=ttyS0 quiet vpod.hostname=pod-a1 reboot=k");
        assert_eq!(c.hostname, "pod-a1");
    }

    #[test]
    fn invalid_or_missing_hostname_keeps_the_default() {
        assert_eq!(parse("quiet").hostname, "vpod");
        assert_eq!(parse("vpod.hostname=-bad").hostname, "vpod");
        assert_eq!(parse("vpod.hostname=a/b").hostname, "vpod");
        assert_eq!(
            parse(&format!("vpod.hostname={}", "x".repeat(65))).hostname,
            "vpod"
        );
    }

    #[test]
    fn words_after_the_double_dash_belong_to_the_command() {
        assert_eq!(parse("quiet -- vpod.hostname=nope").hostname, "vpod");
    }
}
