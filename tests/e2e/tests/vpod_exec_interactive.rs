//! `vpod exec -i` and `-t` on a pod left running by `vpod run -d`: stdin streamed to the
//! process with its end closing the process's stdin, a pseudo-terminal of the local
//! terminal's size that follows its changes, the process's exit status, the local terminal
//! restored after the session (ended by the process or by a signal to vpod, which kills the
//! process), and `-t` refused without a terminal. util-linux `script` gives vpod a terminal.
//! One emulated host (where guests need one) runs every check here.

use std::process::Command;
use std::time::{Duration, Instant};

use vpod_e2e::process::run_with_limit;
use vpod_e2e::vpod::{VpodRoot, COMMAND_LIMIT};
use vpod_e2e::{in_guest_host, repo_root, Checks, Finished};

const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn exec_streams_stdin_and_runs_on_a_terminal() {
    in_guest_host(LIMIT, || {
        let root = VpodRoot::new("exec-it");
        let pod = root.run_detached(&["--", "sleep", "1000"]);
        let mut checks = Checks::new();
        checks
            .check(
                "exec_i_streams_stdin_and_its_end_closes_the_process_s",
                || stdin_streamed(&root, &pod),
            )
            .check("exec_i_carries_a_large_input", || large_input(&root, &pod))
            .check("exec_it_runs_on_a_terminal_of_the_local_size", || {
                terminal_of_the_local_size(&root, &pod)
            })
            .check("exec_it_follows_resizes_and_a_signal_ends_it", || {
                resized_then_signalled(&root, &pod)
            })
            .check("exec_t_without_a_terminal_is_refused", || {
                refused_without_a_terminal(&root, &pod)
            })
            .check("rm_removes_the_pod", || {
                let done = root.vpod("rm", &[&pod]);
                assert_eq!(done.code(), Some(0), "{}", done.explain());
                assert_eq!(root.pods(), Vec::<String>::new(), "pods left after rm");
            });
        checks.finish();
    });
}

/// `vpod exec --root ROOT ARGS...` as one shell word list.
fn vpod_exec_words(root: &VpodRoot, args: &[&str]) -> String {
    let vpod = repo_root().join("target/release/vpod");
    let root = root.path().display().to_string();
    let mut words = vec![
        vpod.display().to_string(),
        "exec".into(),
        "--root".into(),
        root,
    ];
    words.extend(args.iter().map(|a| a.to_string()));
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sh -c SCRIPT`, its stdin from /dev/null.
fn sh(script: &str) -> Finished {
    run_with_limit(Command::new("sh").args(["-c", script]), COMMAND_LIMIT)
}

/// SCRIPT run by a shell on a terminal of its own: `script -qec SCRIPT /dev/null` (its exit
/// status is the shell's). The lines of what the terminal showed, without their `\r` and
/// without `^@`: when its own stdin (/dev/null) ends, `script` types a NUL on a terminal in
/// raw mode, which vpod passes on and the container's terminal echoes, wherever the
/// output then is.
fn on_a_terminal(script: &str) -> (Finished, Vec<String>) {
    let done = run_with_limit(
        Command::new("script").args(["-qec", script, "/dev/null"]),
        COMMAND_LIMIT,
    );
    let lines = done
        .stdout_text()
        .lines()
        .map(|l| l.trim_end_matches('\r').replace("^@", ""))
        .collect();
    (done, lines)
}

fn stdin_streamed(root: &VpodRoot, pod: &str) {
    let exec = vpod_exec_words(root, &["-i", pod, "--", "cat"]);
    let done = sh(&format!("printf 'one\\ntwo words\\n' | {exec}"));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert_eq!(done.stdout_text(), "one\ntwo words\n", "{}", done.explain());
    // Without -i the process's stdin is empty: cat ends at once.
    let exec = vpod_exec_words(root, &[pod, "--", "cat"]);
    let done = sh(&format!("echo not-sent | {exec}"));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert_eq!(done.stdout_text(), "", "{}", done.explain());
}

fn large_input(root: &VpodRoot, pod: &str) {
    // About 1.3 MB; wc answers only once the end of input reached it.
    let exec = vpod_exec_words(root, &["-i", pod, "--", "sh", "-c", "wc -l; exit 3"]);
    let done = sh(&format!("seq 1 200000 | {exec}"));
    assert_eq!(done.code(), Some(3), "{}", done.explain());
    assert_eq!(done.stdout_text().trim(), "200000", "{}", done.explain());
}

fn terminal_of_the_local_size(root: &VpodRoot, pod: &str) {
    let exec = vpod_exec_words(
        root,
        &["-it", pod, "--", "sh", "-c", "tty; stty size; exit 7"],
    );
    let (done, lines) = on_a_terminal(&format!(
        "stty rows 40 cols 100; stty -g; {exec}; status=$?; stty -g; exit $status"
    ));
    assert_eq!(done.code(), Some(7), "{}", done.explain());
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "no terminal in the container\n{}",
        done.explain()
    );
    assert!(
        lines.iter().any(|l| l == "40 100"),
        "not the local size\n{}",
        done.explain()
    );
    assert_eq!(
        lines.first(),
        lines.last(),
        "the terminal's settings differ after the session\n{}",
        done.explain()
    );
}

fn resized_then_signalled(root: &VpodRoot, pod: &str) {
    // The process marks when it has seen the first size and then the second; the shell on
    // the terminal waits for each mark (looked for with a plain exec) before it resizes
    // the terminal, then before it sends vpod SIGTERM.
    let process = "stty size; touch /exec-sized; i=0; \
                   while [ \"$(stty size)\" != '50 120' ] && [ $i -lt 300 ]; do \
                   sleep 0.1; i=$((i+1)); done; \
                   stty size; touch /exec-resized; exec sleep 999";
    let session = vpod_exec_words(root, &["-it", pod, "--", "sh", "-c", process]);
    let wait_for = |mark: &str| {
        let test = vpod_exec_words(root, &[pod, "--", "test", "-e", mark]);
        format!("n=0; until {test} || [ $n -ge 300 ]; do sleep 0.2; n=$((n+1)); done")
    };
    let (done, lines) = on_a_terminal(&format!(
        "stty rows 40 cols 100; stty -g; {session} </dev/tty & {}; stty rows 50 cols 120; \
         {}; kill -TERM $!; wait $!; echo status=$?; stty -g",
        wait_for("/exec-sized"),
        wait_for("/exec-resized"),
    ));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    // `stty size` lines: two numbers.
    let sizes: Vec<&String> = lines
        .iter()
        .filter(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            words.len() == 2 && words.iter().all(|w| w.parse::<u16>().is_ok())
        })
        .collect();
    assert_eq!(sizes, ["40 100", "50 120"], "{}", done.explain());
    assert!(
        lines.iter().any(|l| l == "status=143"),
        "vpod's status after SIGTERM is not 128 + 15\n{}",
        done.explain()
    );
    assert_eq!(
        lines.first(),
        lines.last(),
        "the terminal's settings differ after the session\n{}",
        done.explain()
    );
    // The agent kills the process of a session that vpod left.
    let started = Instant::now();
    loop {
        let ps = root.vpod(
            "exec",
            &[pod, "--", "sh", "-c", "ps -o args | grep -c '^sleep 99[9]'"],
        );
        if ps.stdout_text().trim() == "0" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the session's process still runs\n{}",
            ps.explain()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn refused_without_a_terminal(root: &VpodRoot, pod: &str) {
    for flags in ["-t", "-it"] {
        let done = root.vpod("exec", &[flags, pod, "--", "true"]);
        assert_eq!(done.code(), Some(125), "{flags}\n{}", done.explain());
        assert!(
            done.stderr_text().contains("not a TTY"),
            "{flags}: no clear message\n{}",
            done.explain()
        );
    }
}
