//! Server configuration: command-line flags with environment equivalents, plus an optional
//! TOML file (`TOPGUN_CONFIG`) for permissions, search fields and limits.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Environment;
use crate::security::Policy;
use crate::store::RedbOptions;

/// Which store backend holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Embedded durable store (redb) in the data directory.
    Redb,
    /// Nothing survives a restart; for tests and throwaway runs.
    Memory,
}

/// What the event journal (CDC: `JOURNAL_SUBSCRIBE` / `JOURNAL_READ`) keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalMode {
    /// Every change is numbered, kept in the store (`journal_retention` newest) and in an
    /// in-memory ring: readers can resume from any retained sequence, even after a restart.
    /// It writes every change twice more (with its previous value, to the write-ahead log
    /// and a journal block file): under write-heavy load the server spends about a fifth
    /// more CPU per write than with `off` (13–31 % in interleaved runs), a third to a half
    /// of it numbering and encoding, which `memory` pays too.
    #[default]
    Durable,
    /// Changes are numbered and kept only in the in-memory ring (`journal_capacity` newest),
    /// as in TopGun 2026-08: reads older than the ring start at its oldest entry, and a
    /// restart empties it. Sequences still never go back. Entries a durable run left in the
    /// store stay there, untouched, until the journal is durable again.
    Memory,
    /// No journal: `JOURNAL_SUBSCRIBE` and `JOURNAL_READ` are answered with `ERROR 503`
    /// ("Event journal not enabled", as TopGun answers when its journal is disabled).
    Off,
}

/// Deployment mode; production refuses unsafe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Development,
    Production,
}

/// `topgun serve` flags. Every flag can also be given through the environment variable shown.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOPGUN_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port for WebSocket clients and the HTTP endpoints (/health, /ready, /metrics).
    #[arg(long, env = "TOPGUN_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Storage backend.
    #[arg(long, env = "TOPGUN_STORE", value_enum, default_value = "redb")]
    pub store: StoreKind,
    /// Directory of the embedded store.
    #[arg(long, env = "TOPGUN_DATA_DIR", default_value = "./topgun-data")]
    pub data_dir: PathBuf,
    /// Embedded store: most milliseconds a committed change stays only in the write-ahead
    /// log and memory before a checkpoint copies it into the database file.
    #[arg(long, env = "TOPGUN_CHECKPOINT_INTERVAL_MS", default_value_t = 1_000)]
    pub checkpoint_interval_ms: u64,
    /// Embedded store: map rows kept in memory between checkpoints (changed plus cached)
    /// before one is forced; while a checkpoint runs up to twice this is held. Journal
    /// entries are bounded by the write-ahead log's size (64 MiB) instead.
    #[arg(long, env = "TOPGUN_MAX_OVERLAY_ROWS", default_value_t = 100_000)]
    pub max_overlay_rows: usize,
    /// Embedded store: the database file's page cache, in MiB.
    #[arg(long, env = "TOPGUN_STORE_CACHE_MIB", default_value_t = 128)]
    pub store_cache_mib: usize,
    /// Embedded store: most milliseconds an APPLIED / FIRE_AND_FORGET write waits in memory
    /// before the write-ahead log is synced (the window a crash can lose it in); 0 syncs at
    /// once. PERSISTED writes are always synced before they are acknowledged.
    #[arg(long, env = "TOPGUN_QUEUED_SYNC_MS", default_value_t = 5)]
    pub queued_sync_ms: u64,
    /// JWT secret: an HS256 shared secret, or a PEM public key for RS256. Required in
    /// production (at least 32 bytes for HS256); development falls back to a dev secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Deployment mode. `NODE_ENV=production` also selects production, as in TopGun.
    #[arg(
        long = "env",
        env = "TOPGUN_ENV",
        value_enum,
        default_value = "development"
    )]
    pub mode: Mode,
    /// Verbose per-access debug logging (map loads and the like).
    #[arg(long, env = "TOPGUN_DEBUG", value_parser = parse_flag, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub debug: bool,
    /// Most simultaneous WebSocket connections; past it the least recently active is evicted.
    #[arg(long, env = "TOPGUN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// The event journal (CDC): `durable` keeps the newest `journal_retention` changes in the
    /// store, `memory` only the newest `journal_capacity` in memory, `off` none (and refuses
    /// journal requests). Overrides `[limits] journal` of the config file; without either,
    /// `durable`.
    #[arg(long, env = "TOPGUN_JOURNAL", value_enum)]
    pub journal: Option<JournalMode>,
    /// TOML file with permissions, full-text search fields and limits (see README).
    #[arg(long, env = "TOPGUN_CONFIG")]
    pub config: Option<PathBuf>,
    /// FOR BENCHMARKING ONLY: skip the JSON Schema check of inbound messages, to measure what
    /// validation costs. Never use it in production: malformed messages then reach the
    /// handlers with only the typed decoding between them. Hidden from `--help`.
    #[arg(long, hide = true, default_value_t = false)]
    pub unsafe_skip_validation: bool,
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected 1/0/true/false, got {other:?}")),
    }
}

/// Parses `serve` flags from the environment alone (for a bare `topgun` invocation).
#[derive(Debug, clap::Parser)]
struct EnvOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// The embedded store's settings from the `serve` flags (the rest keep their defaults).
    pub fn redb_options(&self) -> RedbOptions {
        RedbOptions {
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms.max(1)),
            max_overlay_rows: self.max_overlay_rows.max(1),
            cache_bytes: self.store_cache_mib.max(1).saturating_mul(1 << 20),
            queued_sync_delay: Duration::from_millis(self.queued_sync_ms),
            ..RedbOptions::default()
        }
    }

    /// The `serve` settings when no command was given: defaults plus environment variables.
    pub fn parse_from_env() -> Self {
        <EnvOnly as clap::Parser>::parse_from(["topgun"]).args
    }

    /// The effective mode: production if either `--env production` or `NODE_ENV=production`.
    pub fn environment(&self, node_env: Option<&str>) -> Environment {
        if self.mode == Mode::Production || node_env == Some("production") {
            Environment::Production
        } else {
            Environment::Development
        }
    }
}

/// The optional TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Permission policies; absent means the mode's default (see `Permissions`).
    #[serde(default)]
    pub permissions: Option<Vec<Policy>>,
    /// Full-text search: map name → indexed fields.
    #[serde(default)]
    pub search: BTreeMap<String, SearchMapConfig>,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
}

/// Full-text search settings of one map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchMapConfig {
    /// Top-level record fields to index.
    pub fields: Vec<String>,
}

/// Limits and timeouts, all with production-sane defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted WebSocket message in bytes.
    pub max_frame_bytes: usize,
    /// Deepest accepted nesting of maps/arrays in a message.
    pub max_nesting_depth: usize,
    /// Unauthenticated sockets are closed after this long.
    pub auth_timeout_ms: u64,
    /// Authenticated sockets without a PING for this long are closed (4002).
    pub heartbeat_timeout_ms: u64,
    /// Invalid frames allowed per connection per `invalid_frame_window_ms` before close 1008.
    pub invalid_frames: u32,
    /// Window of the invalid-frame token bucket.
    pub invalid_frame_window_ms: u64,
    /// Log lines about invalid frames per connection per window.
    pub invalid_frame_log_lines: u32,
    /// Clock leeway for JWT `exp`/`nbf`.
    pub jwt_leeway_secs: u64,
    /// Reject ops whose HLC timestamp is too far ahead of the server clock.
    pub hlc_strict: bool,
    /// How far ahead is too far (HLC strict mode).
    pub max_drift_ms: u64,
    /// Queued outbound messages per connection before it is considered too slow and closed.
    pub outbound_queue: usize,
    /// Queued outbound bytes per connection before it is considered too slow and closed (one
    /// larger frame still goes out when nothing else is queued).
    pub outbound_queue_bytes: usize,
    /// Clients whose last sync is older than this must reset (`SYNC_RESET_REQUIRED`); tombstones
    /// older than this are pruned.
    pub gc_age_ms: u64,
    /// Topics one connection may subscribe to at once.
    pub max_topic_subscriptions: usize,
    /// Live queries the whole server holds before `QUERY_SUB` is refused (`ERROR 429`).
    pub max_live_queries: usize,
    /// Period of the TTL-expiry and tombstone-GC pass; 0 turns the periodic pass off.
    pub gc_interval_ms: u64,
    /// What the event journal keeps (`durable`, `memory` or `off`).
    pub journal: JournalMode,
    /// Recent journal events kept in memory (older reads go to the store when the journal
    /// is durable).
    pub journal_capacity: usize,
    /// Journal events kept in the store (the newest ones) when the journal is durable; 0
    /// keeps every event.
    pub journal_retention: u64,
    /// Jobs the CPU worker pool runs at once; 0 means the available parallelism.
    pub worker_threads: usize,
    /// Frames of at least this many bytes are decoded and validated on the worker pool.
    pub pool_frame_bytes: usize,
    /// `OP_BATCH`es with more ops than this are merged on the worker pool.
    pub pool_batch_ops: usize,
    /// Ops merged per hold of a map's lock on the pool, so other writers interleave.
    pub merge_slice_ops: usize,
    /// Stored maps with more keys than this are rebuilt on the worker pool when loaded.
    pub pool_load_keys: usize,
    /// Sync responses with at least this many rows are encoded on the worker pool.
    pub pool_response_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 2 * 1024 * 1024,
            max_nesting_depth: 64,
            auth_timeout_ms: 10_000,
            heartbeat_timeout_ms: 20_000,
            invalid_frames: 10,
            invalid_frame_window_ms: 10_000,
            invalid_frame_log_lines: 5,
            jwt_leeway_secs: 60,
            hlc_strict: false,
            max_drift_ms: 300_000,
            outbound_queue: 4_096,
            outbound_queue_bytes: 64 << 20,
            gc_age_ms: 30 * 24 * 3_600_000,
            max_topic_subscriptions: super::topics::DEFAULT_MAX_SUBSCRIPTIONS,
            max_live_queries: 100_000,
            gc_interval_ms: 60_000,
            journal: JournalMode::Durable,
            journal_capacity: 10_000,
            journal_retention: 1_000_000,
            worker_threads: 0,
            pool_frame_bytes: 64 * 1024,
            pool_batch_ops: 256,
            merge_slice_ops: 512,
            pool_load_keys: 5_000,
            pool_response_rows: 500,
        }
    }
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl FileConfig {
    /// Reads and parses the TOML file; unknown keys are errors so typos do not go unnoticed.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_flags_become_redb_options() {
        let defaults = <EnvOnly as clap::Parser>::parse_from(["topgun"]).args;
        let options = defaults.redb_options();
        assert_eq!(options.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(
            options.max_overlay_rows,
            RedbOptions::default().max_overlay_rows
        );
        assert_eq!(options.cache_bytes, RedbOptions::default().cache_bytes);
        assert_eq!(
            options.queued_sync_delay,
            RedbOptions::default().queued_sync_delay
        );
        let tuned = <EnvOnly as clap::Parser>::parse_from([
            "topgun",
            "--checkpoint-interval-ms",
            "250",
            "--max-overlay-rows",
            "5000",
            "--store-cache-mib",
            "64",
            "--queued-sync-ms",
            "0",
        ])
        .args
        .redb_options();
        assert_eq!(tuned.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(tuned.max_overlay_rows, 5_000);
        assert_eq!(tuned.cache_bytes, 64 << 20);
        assert_eq!(tuned.queued_sync_delay, Duration::ZERO);
        assert_eq!(tuned.max_log_bytes, RedbOptions::default().max_log_bytes);
    }

    #[test]
    fn the_journal_mode_comes_from_the_file_or_the_flag() {
        assert_eq!(Limits::default().journal, JournalMode::Durable);
        let file = FileConfig::parse("[limits]\njournal = \"memory\"\n").unwrap();
        assert_eq!(file.limits.journal, JournalMode::Memory);
        assert!(FileConfig::parse("[limits]\njournal = \"sometimes\"\n").is_err());
        let flag = <EnvOnly as clap::Parser>::parse_from(["topgun", "--journal", "off"]).args;
        assert_eq!(flag.journal, Some(JournalMode::Off));
        let unset = <EnvOnly as clap::Parser>::parse_from(["topgun"]).args;
        assert_eq!(unset.journal, None);
    }

    #[test]
    fn parses_a_full_file_and_rejects_typos() {
        let cfg = FileConfig::parse(
            r#"
            [[permissions]]
            role = "USER"
            map = "todos-*"
            actions = ["READ", "PUT"]

            [search.articles]
            fields = ["title", "body"]

            [limits]
            invalid_frames = 3
            hlc_strict = true
            "#,
        )
        .unwrap();
        assert_eq!(cfg.permissions.as_ref().map(Vec::len), Some(1));
        assert_eq!(cfg.search["articles"].fields, vec!["title", "body"]);
        assert_eq!(cfg.limits.invalid_frames, 3);
        assert!(cfg.limits.hlc_strict);
        assert_eq!(
            cfg.limits.max_frame_bytes,
            2 * 1024 * 1024,
            "unset limits keep defaults"
        );
        assert!(FileConfig::parse("[limits]\ninvalid_frame = 3\n").is_err());
    }

    #[test]
    fn debug_flag_accepts_env_style_values() {
        assert_eq!(parse_flag("1"), Ok(true));
        assert_eq!(parse_flag("0"), Ok(false));
        assert!(parse_flag("maybe").is_err());
    }
}

#[cfg(test)]
mod readme_tests {
    use super::*;

    /// The README's example config must stay a valid config with the real defaults.
    #[test]
    fn readme_example_config_parses_and_states_the_defaults() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml").expect("README has a toml example") + "```toml".len();
        let end = start + readme[start..].find("```").expect("closed code block");
        let config = FileConfig::parse(&readme[start..end]).expect("README example parses");
        assert_eq!(config.search["articles"].fields, vec!["title", "body"]);
        let defaults = Limits::default();
        let stated = config.limits;
        assert_eq!(
            format!("{stated:?}"),
            format!("{defaults:?}"),
            "README states the defaults"
        );
        let debug = format!("{defaults:?}");
        let inner = debug
            .split_once('{')
            .map_or("", |(_, rest)| rest.trim_end_matches('}'));
        for field in inner.split(", ").filter_map(|pair| pair.split(':').next()) {
            let field = field.trim();
            assert!(
                readme[start..end].contains(&format!("\n{field} = ")),
                "README's example config does not document limits.{field}"
            );
        }
    }
}
