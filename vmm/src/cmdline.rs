//! The kernel command line: the base line, the parameters devices ask for, the virtio-mmio
//! devices, then the guest command.

/// Errors assembling the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("the kernel command line would be {0} bytes, more than the kernel's limit of {1}")]
    TooLong(usize, usize),
    #[error(
        "guest argument {0:?} contains a double quote, which the kernel command line cannot carry"
    )]
    Quote(String),
    #[error("the kernel command line contains a NUL byte")]
    Nul,
}

/// One virtio-mmio device as the kernel must be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceEntry {
    pub address: u64,
    pub size: u64,
    pub irq: u32,
}

/// Quotes a word for the kernel's parser: words with whitespace (or empty ones) go in double
/// quotes, which the kernel strips when it hands the word to init.
fn quote_init_word(word: &str) -> Result<String, CmdlineError> {
    if word.contains('"') {
        return Err(CmdlineError::Quote(word.to_string()));
    }
    if word.is_empty() || word.chars().any(|c| c.is_ascii_whitespace()) {
        Ok(format!("\"{word}\""))
    } else {
        Ok(word.to_string())
    }
}

fn size_text(size: u64) -> String {
    if size % 1024 == 0 {
        format!("{}K", size / 1024)
    } else {
        size.to_string()
    }
}

/// `base` followed by each of `defaults` whose key (the text before `=`, with `-` read as
/// `_`, as the kernel reads parameter names) no word of `base` sets: a device's parameter
/// never overrides one the configuration gave.
pub fn with_defaults(base: &str, defaults: &[String]) -> String {
    let key = |word: &str| word.split('=').next().unwrap_or(word).replace('-', "_");
    let mut line = base.trim().to_string();
    for param in defaults {
        let name = key(param);
        if line.split_ascii_whitespace().any(|word| key(word) == name) {
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(param);
    }
    line
}

/// Assembles `base`, the `virtio_mmio.device=` entries and ` -- ` plus `init_args`.
/// `max_size` counts the terminating NUL.
pub fn kernel_cmdline(
    base: &str,
    devices: &[MmioDeviceEntry],
    init_args: &[String],
    max_size: usize,
) -> Result<String, CmdlineError> {
    let mut line = base.trim().to_string();
    for device in devices {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!(
            "virtio_mmio.device={}@{:#x}:{}",
            size_text(device.size),
            device.address,
            device.irq
        ));
    }
    if !init_args.is_empty() {
        line.push_str(" --");
        for word in init_args {
            line.push(' ');
            line.push_str(&quote_init_word(word)?);
        }
    }
    if line.contains('\0') {
        return Err(CmdlineError::Nul);
    }
    if line.len() + 1 > max_size {
        return Err(CmdlineError::TooLong(line.len() + 1, max_size));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_init_args_follow_the_base() {
        let devices = [
            MmioDeviceEntry {
                address: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceEntry {
                address: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let args = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo hi".to_string(),
            "x=y".to_string(),
        ];
        let line = kernel_cmdline("console=ttyS0 quiet", &devices, &args, 2048).expect("fits");
        assert_eq!(
            line,
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 -- sh -c \"echo hi\" x=y"
        );
    }

    #[test]
    fn defaults_are_added_unless_the_base_sets_their_key() {
        let order = vec!["page_reporting.page_reporting_order=0".to_string()];
        assert_eq!(
            with_defaults("console=ttyS0 quiet", &order),
            "console=ttyS0 quiet page_reporting.page_reporting_order=0"
        );
        assert_eq!(
            with_defaults("quiet page_reporting.page_reporting_order=9", &order),
            "quiet page_reporting.page_reporting_order=9"
        );
        assert_eq!(
            with_defaults("page_reporting.page-reporting-order=3", &order),
            "page_reporting.page-reporting-order=3"
        );
        // A key that only starts like another one is a different key.
        assert_eq!(
            with_defaults("page_reporting.page_reporting_order_x=1", &order),
            "page_reporting.page_reporting_order_x=1 page_reporting.page_reporting_order=0"
        );
        assert_eq!(with_defaults("", &order), order[0]);
    }

    #[test]
    fn empty_and_tab_words_are_quoted() {
        let args = vec![String::new(), "a\tb".to_string()];
        assert_eq!(
            kernel_cmdline("q", &[], &args, 100).expect("fits"),
            "q -- \"\" \"a\tb\""
        );
    }

    #[test]
    fn no_separator_without_init_args() {
        assert_eq!(
            kernel_cmdline(" quiet ", &[], &[], 100).expect("fits"),
            "quiet"
        );
    }

    #[test]
    fn quotes_and_overlong_lines_are_refused() {
        let quoted = vec!["a\"b".to_string()];
        assert!(matches!(
            kernel_cmdline("q", &[], &quoted, 100),
            Err(CmdlineError::Quote(_))
        ));
        let long = vec!["x".repeat(2048)];
        assert!(matches!(
            kernel_cmdline("q", &[], &long, 2048),
            Err(CmdlineError::TooLong(..))
        ));
        // Exactly at the limit (the NUL counts) is fine.
        assert!(kernel_cmdline(&"y".repeat(2047), &[], &[], 2048).is_ok());
    }
}
