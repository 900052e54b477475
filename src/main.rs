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
