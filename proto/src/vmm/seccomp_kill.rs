//! The line a VMM writes on stderr as its seccomp filter kills it (`vpod-vmm: killed by
//! seccomp: syscall N in thread NAME`), and its reading back by a launcher, which reports
//! the VMM's death by SIGSYS with it.

/// The start of the line, before the system call's number.
pub const KILL_LINE_PREFIX: &str = "vpod-vmm: killed by seccomp: syscall ";
/// Between the number and the thread's name.
pub const KILL_LINE_THREAD: &str = " in thread ";

/// The line for `syscall` denied in the thread `thread` (without its newline).
pub fn kill_line(syscall: u64, thread: &str) -> String {
    format!("{KILL_LINE_PREFIX}{syscall}{KILL_LINE_THREAD}{thread}")
}

/// The system call and thread of the first kill line in `text` (a VMM's stderr), if any.
pub fn seccomp_kill_from_log(text: &str) -> Option<(u64, String)> {
    text.lines().find_map(|line| {
        let rest = &line[line.find(KILL_LINE_PREFIX)? + KILL_LINE_PREFIX.len()..];
        let (number, thread) = rest.split_once(KILL_LINE_THREAD)?;
        let thread = thread.trim_end();
        if thread.is_empty() {
            return None;
        }
        Some((number.parse().ok()?, thread.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_line_is_read_back() {
        let log = format!("boot\n{}\nmore\n", kill_line(169, "vcpu"));
        assert_eq!(seccomp_kill_from_log(&log), Some((169, "vcpu".into())));
    }

    #[test]
    fn the_first_kill_line_wins_and_surrounding_text_is_ignored() {
        let log = format!(
            "[  1.0] x {}\r\n{}\n",
            kill_line(7, "main"),
            kill_line(9, "vcpu")
        );
        assert_eq!(seccomp_kill_from_log(&log), Some((7, "main".into())));
    }

    #[test]
    fn text_without_a_whole_kill_line_reads_as_none() {
        assert_eq!(seccomp_kill_from_log(""), None);
        assert_eq!(seccomp_kill_from_log("vpod-vmm: error: no KVM"), None);
        assert_eq!(seccomp_kill_from_log(KILL_LINE_PREFIX), None);
        let no_number = format!("{KILL_LINE_PREFIX}x in thread main");
        assert_eq!(seccomp_kill_from_log(&no_number), None);
        let no_thread = format!("{KILL_LINE_PREFIX}12 in thread ");
        assert_eq!(seccomp_kill_from_log(&no_thread), None);
    }
}
