//! The CRI runtime's targets for `vpod-bench check`, from `bench/results/cri-latency.jsonl`
//! and `cri-memory.jsonl`:
//!
//! - pod to running (RunPodSandbox + CreateContainer + StartContainer until the container is
//!   reported running), one pod, p50 at most 200 ms: a target on real KVM only; inside the
//!   emulated KVM host the figures and their ratio to runc are shown as `info`;
//! - host memory per idle pod (the VMM's resident memory, guest RAM included) at most
//!   40 MiB at every pod count measured, on either kind of host.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

pub const POD_TO_RUNNING_P50_MS: f64 = 200.0;
pub const IDLE_POD_MIB: f64 = 40.0;

fn rows(dir: &Path, name: &str) -> Result<Vec<Value>> {
    let path = dir.join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is missing: run `make bench`", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("a bad line in {}", path.display()))
        })
        .collect()
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or("")
}

fn find<'a>(rows: &'a [Value], bench: &str, imp: &str, config_prefix: &str) -> Option<&'a Value> {
    rows.iter().find(|r| {
        text(r, "bench") == bench
            && text(r, "impl") == imp
            && text(r, "config").starts_with(config_prefix)
    })
}

/// Prints each CRI target as met or missed (and figures without a target as `info`); the
/// number missed.
pub fn check(dir: &Path) -> Result<usize> {
    let latency = rows(dir, "cri-latency")?;
    let memory = rows(dir, "cri-memory")?;
    let mut missed = 0;
    for prefix in ["1pod-", "10pods-"] {
        let Some(ours) = find(&latency, "cri_pod_to_running", "vpod", prefix) else {
            println!("n/a    CRI pod to running ({prefix}*): no measurement");
            continue;
        };
        let (config, host) = (text(ours, "config"), text(ours, "host"));
        let p50 = ours["p50_ms"].as_f64();
        let p90 = ours["p90_ms"].as_f64();
        let p50_of = |bench: &str, imp: &str| {
            find(&latency, bench, imp, prefix).and_then(|r| r["p50_ms"].as_f64())
        };
        let runc = p50_of("cri_pod_to_running", "runc").map_or(String::new(), |b| {
            format!(
                " (runc create+start {b:.0} ms: {:.1}x)",
                p50.unwrap_or(f64::NAN) / b
            )
        });
        let output = match (
            p50_of("cri_pod_to_output", "vpod"),
            p50_of("cri_pod_to_output", "runc"),
        ) {
            (Some(a), Some(b)) => format!(
                "; to its first log line p50 {a:.0} ms (runc run to its line {b:.0} ms: {:.1}x)",
                a / b
            ),
            (Some(a), None) => format!("; to its first log line p50 {a:.0} ms"),
            _ => String::new(),
        };
        let figures = format!(
            "CRI pod to running ({config}, {host}): p50 {:.0} ms, p90 {:.0} ms{runc}{output}",
            p50.unwrap_or(f64::NAN),
            p90.unwrap_or(f64::NAN)
        );
        if prefix == "1pod-" && host == "kvm" {
            let ok = p50.is_some_and(|v| v <= POD_TO_RUNNING_P50_MS);
            missed += usize::from(!ok);
            println!(
                "{} {figures} (target p50 <= {POD_TO_RUNNING_P50_MS:.0} ms)",
                if ok { "MET   " } else { "MISSED" }
            );
        } else {
            println!("info   {figures}");
        }
    }
    if let Some(runp) = find(&latency, "cri_runp", "vpod", "1pod-") {
        println!(
            "info   CRI RunPodSandbox ({}, {}): p50 {:.0} ms",
            text(runp, "config"),
            text(runp, "host"),
            runp["p50_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let idle: Vec<&Value> = memory
        .iter()
        .filter(|r| text(r, "bench") == "cri_idle_pod_memory")
        .collect();
    if idle.is_empty() {
        println!("n/a    CRI idle pod host memory: no measurement");
    }
    for row in idle {
        let mib = row["rss_kib"].as_f64().map(|k| k / 1024.0);
        let ok = mib.is_some_and(|m| m <= IDLE_POD_MIB);
        missed += usize::from(!ok);
        println!(
            "{} CRI idle pod host memory, VMM resident ({}, {}): {:.1} MiB (target <= {IDLE_POD_MIB:.0} MiB)",
            if ok { "MET   " } else { "MISSED" },
            text(row, "config"),
            text(row, "host"),
            mib.unwrap_or(f64::NAN)
        );
    }
    Ok(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_apply_on_kvm_and_memory_everywhere() {
        let dir = std::env::temp_dir().join(format!("vpod-bench-cri-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, lines: &[&str]| {
            std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n")).unwrap()
        };
        write(
            "cri-latency",
            &[
                r#"{"bench":"cri_pod_to_running","impl":"vpod","config":"1pod-128m","host":"emulated","runs":5,"p50_ms":4000.0,"p90_ms":5000.0}"#,
                r#"{"bench":"cri_pod_to_running","impl":"runc","config":"1pod-128m","host":"emulated","runs":5,"p50_ms":100.0,"p90_ms":120.0}"#,
            ],
        );
        write(
            "cri-memory",
            &[
                r#"{"bench":"cri_idle_pod_memory","impl":"vpod","config":"10pods-128m","host":"emulated","rss_kib":30720}"#,
            ],
        );
        assert_eq!(check(&dir).unwrap(), 0, "emulated latency is not a target");
        write(
            "cri-latency",
            &[
                r#"{"bench":"cri_pod_to_running","impl":"vpod","config":"1pod-128m","host":"kvm","runs":5,"p50_ms":250.0,"p90_ms":300.0}"#,
            ],
        );
        write(
            "cri-memory",
            &[
                r#"{"bench":"cri_idle_pod_memory","impl":"vpod","config":"10pods-128m","host":"emulated","rss_kib":51200}"#,
            ],
        );
        assert_eq!(check(&dir).unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
