//! The bench report: one section per workload, printed as a table (human units) and written
//! as JSON. `--json FILE` merges the run's section into the file, so several runs (as
//! `just bench` does) collect into one report.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::connections::ConnectionsReport;
use super::fanout::FanoutReport;
use super::sync::SyncReport;
use super::write::WriteReport;

/// Table rows: (metric, value).
pub type Rows = Vec<(String, String)>;

/// Every workload's latest result against one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `write` without `--wait` (a bounded pipeline per connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteReport>,
    /// `write --wait` (each batch awaits its ack), kept apart so one report holds both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_wait: Option<WriteReport>,
    /// `write --rate` (paced: latency at a given load), kept apart from the unpaced runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_paced: Option<WriteReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
}

impl Report {
    /// Takes every section `newer` has, keeping the others.
    pub fn merge(&mut self, newer: Report) {
        self.url = newer.url.or(self.url.take());
        self.write = newer.write.or(self.write.take());
        self.write_wait = newer.write_wait.or(self.write_wait.take());
        self.write_paced = newer.write_paced.or(self.write_paced.take());
        self.fanout = newer.fanout.or(self.fanout.take());
        self.connections = newer.connections.or(self.connections.take());
        self.sync = newer.sync.or(self.sync.take());
    }

    /// The sections present, as a text table.
    pub fn table(&self) -> String {
        let mut sections: Vec<(&str, Rows)> = Vec::new();
        if let Some(r) = &self.write_wait {
            sections.push(("write", r.rows()));
        }
        if let Some(r) = &self.write_paced {
            sections.push(("write", r.rows()));
        }
        if let Some(r) = &self.write {
            sections.push(("write", r.rows()));
        }
        if let Some(r) = &self.fanout {
            sections.push(("fanout", r.rows()));
        }
        if let Some(r) = &self.connections {
            sections.push(("connections", r.rows()));
        }
        if let Some(r) = &self.sync {
            sections.push(("sync", r.rows()));
        }
        let width = sections
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|(k, _)| k.chars().count()))
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        if let Some(url) = &self.url {
            out.push_str(&format!("topgun bench against {url}\n"));
        }
        for (name, rows) in sections {
            out.push_str(&format!("\n{name}\n{}\n", "-".repeat(width + 30)));
            for (metric, value) in rows {
                out.push_str(&format!("  {metric:<width$}  {value}\n"));
            }
        }
        out
    }

    /// Merges this report into the JSON file at `path` (created if missing or unreadable).
    pub fn merge_into_file(&self, path: &Path) -> Result<Report, BenchError> {
        let mut merged = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<Report>(&text).ok())
            .unwrap_or_default();
        merged.merge(self.clone());
        let text =
            serde_json::to_string_pretty(&merged).map_err(|e| BenchError::Encode(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::Write {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        std::fs::write(path, text + "\n").map_err(|e| BenchError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(merged)
    }
}

/// `bytes` in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1_024.0 {
        return format!("{bytes:.0} B");
    }
    let mut value = bytes / 1_024.0;
    let mut unit = 0;
    while value >= 1_024.0 && unit < UNITS.len() - 1 {
        value /= 1_024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A count or rate in decimal units: `950`, `12.3k`, `4.56M`.
pub fn human_count(n: f64) -> String {
    if n < 1_000.0 {
        format!("{n:.0}")
    } else if n < 1_000_000.0 {
        format!("{:.1}k", n / 1_000.0)
    } else {
        format!("{:.2}M", n / 1_000_000.0)
    }
}

/// Milliseconds with sensible precision.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.0} ms")
    }
}

/// Two latencies for one row: `1.20 ms / 15 ms`.
pub fn ms_pair(first: f64, second: f64) -> String {
    format!("{} / {}", ms(first), ms(second))
}

/// Bytes sent and received for one row: `1.2 GiB / 30.0 MiB`.
pub fn sent_received(sent: u64, received: u64) -> String {
    format!(
        "{} / {}",
        human_bytes(sent as f64),
        human_bytes(received as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::Percentiles;
    use crate::bench::sync::WalkStats;

    fn sync_report() -> SyncReport {
        SyncReport {
            map: "m".to_owned(),
            records: 100,
            preload_secs: 1.0,
            preload_ops_per_sec: 100.0,
            full: WalkStats::default(),
            changed_records: 1,
            changed_bytes: 50,
            delta: WalkStats::default(),
            delta_overhead: 3.0,
            errors: 0,
        }
    }

    fn connections_report() -> ConnectionsReport {
        ConnectionsReport {
            requested: 10,
            opened: 10,
            failed: 0,
            open_secs: 0.5,
            opens_per_sec: 20.0,
            handshake_latency: Percentiles::default(),
            held_secs: 1.0,
            still_open: 10,
            open_file_limit: Some(1_024),
            server_rss_before: None,
            server_rss_after: None,
            server_bytes_per_connection: Some(20_480.0),
            errors: 0,
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1_536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1_048_576.0), "3.0 MiB");
        assert_eq!(human_count(950.0), "950");
        assert_eq!(human_count(12_345.0), "12.3k");
        assert_eq!(human_count(4_560_000.0), "4.56M");
        assert_eq!(ms(1.234), "1.23 ms");
        assert_eq!(ms(123.4), "123 ms");
        assert_eq!(ms_pair(1.234, 123.4), "1.23 ms / 123 ms");
        assert_eq!(sent_received(512, 1_536), "512 B / 1.5 KiB");
    }

    #[test]
    fn table_lists_each_present_section() {
        let report = Report {
            url: Some("ws://x".to_owned()),
            sync: Some(sync_report()),
            connections: Some(connections_report()),
            ..Report::default()
        };
        let table = report.table();
        assert!(table.contains("ws://x"));
        assert!(table.contains("\nsync\n"));
        assert!(table.contains("\nconnections\n"));
        assert!(!table.contains("\nwrite\n"));
        assert!(table.contains("20.0 KiB"), "{table}");
    }

    #[test]
    fn json_file_collects_sections_of_separate_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/report.json");
        Report {
            sync: Some(sync_report()),
            ..Report::default()
        }
        .merge_into_file(&path)
        .unwrap();
        let merged = Report {
            connections: Some(connections_report()),
            ..Report::default()
        }
        .merge_into_file(&path)
        .unwrap();
        let reread: Report =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(reread, merged);
        assert_eq!(reread.sync, Some(sync_report()));
        assert_eq!(reread.connections, Some(connections_report()));
    }
}
