//! The `topgun` command line: `serve` (the default), `token`, `schemas`, `bench`, `floor`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use topgun::auth::{self, Environment};
use topgun::clock::{Clock, SystemClock};
use topgun::entropy::{Entropy, OsEntropy};
use topgun::merkle::Combine;
use topgun::net::{Listener, TcpListener};
use topgun::security::Permissions;
use topgun::server::config::{FileConfig, ServeArgs, StoreKind};
use topgun::server::{Server, ServerOptions};
use topgun::store::{MemoryStore, RedbStore, Store};

/// Decoding frames is allocation-heavy (every message becomes a JSON-like tree first);
/// mimalloc cuts that cost markedly against the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc settings `serve` runs with unless the environment already sets them.
///
/// `MIMALLOC_PURGE_DELAY=-1`: keep freed memory for reuse instead of handing it back to the OS
/// a second after it falls free (mimalloc's default). The durable journal's write-ahead log
/// fills and checkpoints about once a second at high write rates, and each checkpoint frees
/// tens of MiB that the next second allocates again: with the default, a server taking 150k
/// writes/s made ~450 `madvise` calls, ~930 TLB flushes and ~8,000 page faults a second, and
/// spent about 6 % more CPU per write than with this setting (median of 21 interleaved pairs
/// of paced runs on 2026-11-28, 20 of them in the setting's favour).
/// The price: the heap keeps its high-water mark (which the journal, overlay and connection
/// limits bound) instead of shrinking when the load falls.
#[cfg(unix)]
const ALLOCATOR_DEFAULTS: [(&str, &str); 1] = [("MIMALLOC_PURGE_DELAY", "-1")];

/// topgun-rs: the TopGun offline-first data grid server, wire-compatible with TopGun's
/// TypeScript clients (2026-01 and 2026-08).
#[derive(Debug, Parser)]
#[command(name = "topgun", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    #[command(
        after_help = "Allocator: unless MIMALLOC_PURGE_DELAY is set, serve re-executes \
        itself once with MIMALLOC_PURGE_DELAY=-1 (freed memory is kept for reuse, not returned \
        to the OS; about 6 % less CPU per write under heavy load). Set it yourself, in \
        milliseconds, for a heap that shrinks when the load falls."
    )]
    Serve(ServeArgs),
    /// Mint an HS256 JWT for the configured (or development) secret.
    Token {
        /// The subject (user id).
        #[arg(long)]
        sub: String,
        /// Roles, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "USER")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// The secret; defaults to `JWT_SECRET`, else the development secret.
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Load-test a TopGun server (any implementation) over its WebSocket protocol.
    Bench(topgun::bench::BenchArgs),
    /// Run a calibration server for `bench write`: it acks AUTH and OP_BATCH and does no
    /// work (no auth, no merge, no store). What `bench write` measures against it is what the
    /// machine, the network path and the generator cost on their own.
    Floor {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Regenerate the JSON Schemas of every protocol message into a directory.
    Schemas {
        /// Output directory.
        #[arg(long, default_value = "schemas")]
        out: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            sub,
            roles,
            ttl,
            secret,
        }) => mint(&sub, &roles, ttl, secret.as_deref()),
        Some(Command::Schemas { out }) => match topgun::protocol::schema::write_schemas(&out) {
            Ok(()) => {
                println!("wrote schemas to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write schemas to {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Bench(args)) => match topgun::bench::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Floor { host, port }) => floor(std::net::SocketAddr::new(host, port)),
        None => serve(ServeArgs::parse_from_env()),
    }
}

/// Runs [`topgun::bench::floor`] on the runtime `serve` runs on, so the two compare.
fn floor(addr: std::net::SocketAddr) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        eprintln!(
            "floor: acking AUTH and OP_BATCH on ws://{}",
            listener.local_addr()?
        );
        topgun::bench::floor::serve(listener).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: floor on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mint(sub: &str, roles: &[String], ttl: u64, secret: Option<&str>) -> ExitCode {
    let secret = secret.unwrap_or(auth::DEV_DEFAULT_SECRET);
    let now = SystemClock.now_millis() / 1_000;
    match auth::mint_token(secret, sub, roles, ttl, now) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime `serve` and `floor` run on, or the exit code after saying why
/// there is none.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn serve(args: ServeArgs) -> ExitCode {
    #[cfg(unix)]
    reexec_with_allocator_defaults();
    init_logging(args.debug);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run_server(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts this program afresh, same arguments and process id, with [`ALLOCATOR_DEFAULTS`] added
/// to the environment, unless each is set already (by the operator, or by this re-exec).
/// mimalloc reads its options only from the environment, once, as the process loads; its C
/// API could set them later, but only from `unsafe` code, which this crate forbids. Returns
/// only when it did not re-execute.
#[cfg(unix)]
fn reexec_with_allocator_defaults() {
    use std::os::unix::process::CommandExt;

    let missing: Vec<_> = ALLOCATOR_DEFAULTS
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("warning: running with mimalloc's defaults: cannot find this program: {e}");
            return;
        }
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&program);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let error = command.args(args).envs(missing).exec();
    eprintln!(
        "warning: running with mimalloc's defaults: cannot re-execute {}: {error}",
        program.display()
    );
}

fn init_logging(debug: bool) {
    let default = if debug { "topgun=debug,info" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn run_server(args: ServeArgs) -> Result<(), String> {
    let node_env = std::env::var("NODE_ENV").ok();
    let environment = args.environment(node_env.as_deref());
    let secret =
        auth::check_secret(environment, args.jwt_secret.as_deref()).map_err(|e| e.to_string())?;
    if secret.is_development_default() {
        tracing::warn!(
            "JWT_SECRET is not set: using the development secret; mint a token with `topgun token --sub alice`"
        );
    }
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    if let Some(journal) = args.journal {
        file.limits.journal = journal;
    }
    let journal = file.limits.journal;
    let permissions = match (file.permissions.clone(), environment) {
        (Some(policies), _) => Permissions::new(policies),
        (None, Environment::Development) => {
            tracing::warn!(
                "no permissions configured: development mode grants role USER every action on every map"
            );
            Permissions::development_default()
        }
        (None, Environment::Production) => {
            tracing::warn!("no permissions configured: production mode lets only ADMIN in");
            Permissions::admin_only()
        }
    };
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Redb => Arc::new(
            RedbStore::open_with(&args.data_dir, args.redb_options()).map_err(|e| {
                format!("cannot open the store in {}: {e}", args.data_dir.display())
            })?,
        ),
        StoreKind::Memory => Arc::new(MemoryStore::new()),
    };
    let node_id = format!("server-{}", OsEntropy.hex_id(6));
    let options = ServerOptions {
        node_id,
        jwt_secret: secret.secret().to_owned(),
        permissions,
        limits: file.limits,
        max_connections: args.max_connections,
        debug: args.debug,
        default_combine: Combine::Fmix,
        search: topgun::server::search::configs_from_file(&file.search),
    };
    let server = Server::new(options, store, Arc::new(SystemClock), Arc::new(OsEntropy))
        .map_err(|e| e.to_string())?;
    if args.unsafe_skip_validation {
        server.unsafe_skip_validation_for_benchmarks();
    }
    let addr = std::net::SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        store = ?args.store,
        ?journal,
        data_dir = %args.data_dir.display(),
        "topgun ready on ws://{bound} (health: http://{bound}/health)"
    );
    let runner = server.clone();
    let serving = tokio::spawn(async move { runner.run(listener).await });
    wait_for_signal().await;
    tracing::info!("shutting down: notifying clients and flushing the store");
    server.shutdown(Duration::from_secs(5)).await;
    serving.abort();
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
