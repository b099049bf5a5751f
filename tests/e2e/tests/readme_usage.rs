//! The README's usage blocks say what each binary's `--help` says: every flag `--help` lists
//! (by its long or its short spelling) is in the README's usage line for that binary or
//! subcommand, every flag there exists, and every subcommand has a usage line.
//!
//! Usage lines live in the README's ```` ```text ```` blocks: a line that starts in the
//! first column begins one (its first word names the program, its second the subcommand,
//! where the program has subcommands) and indented lines continue it. The binaries are the
//! release builds `make` leaves in target/release; `--help` boots nothing.

use std::collections::BTreeSet;
use std::process::Command;

use vpod_e2e::{built, repo_root};

/// One option of a `--help` text: its spellings (`-m`, `--memory`).
type Spellings = BTreeSet<String>;

fn help(binary: &str, subcommand: Option<&str>) -> String {
    let mut command = Command::new(built(binary));
    command.args(subcommand).arg("--help");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(out.status.success(), "{command:?} failed: {}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The word at `text[at..]` when a flag starts there: `-x` or `--name`.
fn flag_at(text: &str, at: usize) -> Option<&str> {
    let rest = &text[at..];
    let name = rest.strip_prefix("--").or_else(|| rest.strip_prefix('-'))?;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let len = rest.len() - name.len()
        + name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(name.len());
    Some(&rest[..len])
}

/// The options of a help text: the lines indented 2 to 6 spaces that start with a flag
/// (clap's `  -m, --memory <MiB>`, vpod-vmm's `  --kernel PATH`).
fn help_options(help: &str) -> Vec<Spellings> {
    let mut options = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if !(2..=6).contains(&indent) {
            continue;
        }
        let mut spellings = Spellings::new();
        for word in line[indent..].split_whitespace() {
            match flag_at(word.trim_end_matches(','), 0) {
                Some(flag) => spellings.insert(flag.to_string()),
                None => break,
            };
        }
        if !spellings.is_empty() {
            options.push(spellings);
        }
    }
    options
}

/// The subcommands a clap help text lists under `Commands:`, `help` aside.
fn help_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The usage lines of the README's text blocks, continuations joined.
fn readme_usage_lines(readme: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut in_text = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_text = !in_text && line == "```text";
            continue;
        }
        if !in_text || line.trim().is_empty() {
            continue;
        }
        match lines.last_mut() {
            Some(last) if line.starts_with(' ') => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => lines.push(line.to_string()),
        }
    }
    lines
}

/// Every flag a usage line names.
fn usage_flags(line: &str) -> BTreeSet<String> {
    line.char_indices()
        .filter(|&(at, c)| c == '-' && (at == 0 || line[..at].ends_with([' ', '[', '|', '('])))
        .filter_map(|(at, _)| flag_at(line, at))
        .map(str::to_string)
        .collect()
}

/// What disagrees between the options of a help text and the flags of its usage lines.
fn disagreements(what: &str, options: &[Spellings], documented: &BTreeSet<String>) -> Vec<String> {
    let is_help = |o: &Spellings| o.contains("--help") || o.contains("--version");
    let mut wrong = Vec::new();
    for option in options.iter().filter(|o| !is_help(o)) {
        if option.is_disjoint(documented) {
            wrong.push(format!("{what}: the README lacks {}", join(option)));
        }
    }
    let known: BTreeSet<&String> = options.iter().flatten().collect();
    for flag in documented.iter().filter(|f| !known.contains(f)) {
        wrong.push(format!(
            "{what}: the README names {flag}, which --help does not list"
        ));
    }
    wrong
}

fn join(spellings: &Spellings) -> String {
    spellings.iter().cloned().collect::<Vec<_>>().join("/")
}

/// The subcommand a usage line shows: its second word, when that is a lowercase word
/// (not `[--flag`, `COMMAND`).
fn subcommand_of(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// Checks `program`'s usage lines in the README against `binary --help` and each of its
/// subcommands' `--help`, panicking with every disagreement.
fn check(program: &str, binary: &str) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let lines: Vec<String> = readme_usage_lines(&readme)
        .into_iter()
        .filter(|line| line.split_whitespace().next() == Some(program))
        .collect();
    assert!(
        !lines.is_empty(),
        "the README has no usage line for {program}"
    );
    let flags_of = |subcommand: Option<&str>| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|line| subcommand_of(line) == subcommand)
            .flat_map(|line| usage_flags(line))
            .collect()
    };
    let top = help(binary, None);
    let subcommands = help_subcommands(&top);
    let mut wrong = Vec::new();
    for shown in lines.iter().filter_map(|line| subcommand_of(line)) {
        if !subcommands.iter().any(|s| s == shown) {
            wrong.push(format!(
                "the README shows `{program} {shown}`, which --help does not list"
            ));
        }
    }
    wrong.extend(disagreements(program, &help_options(&top), &flags_of(None)));
    for subcommand in &subcommands {
        let what = format!("{program} {subcommand}");
        if !lines.iter().any(|l| subcommand_of(l) == Some(subcommand)) {
            wrong.push(format!("the README has no usage line for `{what}`"));
            continue;
        }
        let options = help_options(&help(binary, Some(subcommand)));
        wrong.extend(disagreements(&what, &options, &flags_of(Some(subcommand))));
    }
    assert!(
        wrong.is_empty(),
        "README.md against --help:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn readme_usage_of_vpod_matches_its_help() {
    check("vpod", "target/release/vpod");
}

#[test]
fn readme_usage_of_vpod_cri_matches_its_help() {
    check("vpod-cri", "target/release/vpod-cri");
}

#[test]
fn readme_usage_of_vpod_crictl_matches_its_help() {
    check("vpod-crictl", "target/release/vpod-crictl");
}

#[test]
fn readme_usage_of_vpod_vmm_matches_its_help() {
    check("vpod-vmm", "target/release/vpod-vmm");
}

#[test]
fn readme_usage_of_vpod_bench_matches_its_help() {
    check("vpod-bench", "target/release/vpod-bench");
}

#[test]
fn readme_usage_of_the_kvm_host_runner_matches_its_help() {
    check("tests/kvm-host/run", "target/release/vpod-kvm-host");
}

#[test]
fn a_flag_missing_on_either_side_is_reported() {
    let help = "Options:\n  -m, --memory <MiB>  memory\n      --timings  print\n  \
                --kernel PATH  a kernel\n  -h, --help  Print help\n  -- COMMAND  words\n";
    let options = help_options(help);
    assert_eq!(options.len(), 4, "{options:?}");
    let line =
        &readme_usage_lines("```text\nx [-m MiB] [--kernel PATH]\n  [--dns IP] [-- CMD]\n```\n")[0];
    let wrong = disagreements("x", &options, &usage_flags(line));
    assert_eq!(
        wrong,
        [
            "x: the README lacks --timings",
            "x: the README names --dns, which --help does not list",
        ]
    );
}
