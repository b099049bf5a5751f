//! Results as a table on stdout and JSON lines in `bench/results/`.

use crate::stats::Summary;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One (benchmark, implementation, configuration) result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub bench: String,
    pub implementation: String,
    pub config: String,
    /// `kvm` when measured on real (or PVM) KVM here, `emulated` inside the emulated host.
    pub host: String,
    pub timing: Option<Summary>,
    pub rss_kib: Option<u64>,
    pub overhead_kib: Option<u64>,
    /// Throughput in MB/s (10^6 bytes a second), for the transfer benchmarks.
    pub mb_s: Option<f64>,
}

impl Row {
    /// A row of timing samples (ms) and nothing else.
    pub fn timing(bench: &str, imp: &str, config: &str, host: &str, samples: &[f64]) -> Row {
        Row {
            bench: bench.into(),
            implementation: imp.into(),
            config: config.into(),
            host: host.into(),
            timing: crate::stats::summarize(samples),
            rss_kib: None,
            overhead_kib: None,
            mb_s: None,
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".to_string(),
    }
}

impl Row {
    pub fn to_json(&self) -> String {
        let t = self.timing;
        format!(
            "{{\"bench\":{},\"impl\":{},\"config\":{},\"host\":{},\"runs\":{},\"p50_ms\":{},\"p90_ms\":{},\"min_ms\":{},\"max_ms\":{},\"rss_kib\":{},\"overhead_kib\":{},\"mb_s\":{}}}",
            json_string(&self.bench),
            json_string(&self.implementation),
            json_string(&self.config),
            json_string(&self.host),
            t.map(|s| s.runs).unwrap_or(0),
            json_number(t.map(|s| s.p50)),
            json_number(t.map(|s| s.p90)),
            json_number(t.map(|s| s.min)),
            json_number(t.map(|s| s.max)),
            self.rss_kib.map_or("null".to_string(), |v| v.to_string()),
            self.overhead_kib.map_or("null".to_string(), |v| v.to_string()),
            json_number(self.mb_s),
        )
    }
}

/// A fixed-width table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<22} {:<12} {:<18} {:<9} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "bench",
        "impl",
        "config",
        "host",
        "runs",
        "p50 ms",
        "p90 ms",
        "min ms",
        "max ms",
        "rss KiB",
        "ovh KiB",
        "MB/s"
    );
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    for r in rows {
        let t = r.timing;
        let _ = writeln!(
            out,
            "{:<22} {:<12} {:<18} {:<9} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            r.bench,
            r.implementation,
            r.config,
            r.host,
            t.map_or(0, |s| s.runs),
            cell(t.map(|s| s.p50)),
            cell(t.map(|s| s.p90)),
            cell(t.map(|s| s.min)),
            cell(t.map(|s| s.max)),
            r.rss_kib.map_or("-".to_string(), |v| v.to_string()),
            r.overhead_kib.map_or("-".to_string(), |v| v.to_string()),
            r.mb_s.map_or("-".to_string(), |v| format!("{v:.1}")),
        );
    }
    out
}

/// Replaces `dir/<name>.jsonl` with the rows, one JSON object a line.
pub fn write_jsonl(dir: &Path, name: &str, rows: &[Row]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.jsonl.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    for r in rows {
        writeln!(f, "{}", r.to_json())?;
    }
    f.sync_all()?;
    std::fs::rename(tmp, dir.join(format!("{name}.jsonl")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialise_with_every_field() {
        let row = Row {
            bench: "stub_to_marker".into(),
            implementation: "vpod-vmm".into(),
            config: "1vcpu-128m".into(),
            host: "kvm".into(),
            timing: Some(Summary {
                runs: 20,
                p50: 1.5,
                p90: 2.0,
                min: 1.0,
                max: 3.0,
            }),
            rss_kib: Some(3000),
            overhead_kib: None,
            mb_s: None,
        };
        assert_eq!(
            row.to_json(),
            "{\"bench\":\"stub_to_marker\",\"impl\":\"vpod-vmm\",\"config\":\"1vcpu-128m\",\"host\":\"kvm\",\"runs\":20,\"p50_ms\":1.500,\"p90_ms\":2.000,\"min_ms\":1.000,\"max_ms\":3.000,\"rss_kib\":3000,\"overhead_kib\":null,\"mb_s\":null}"
        );
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
