//! The `hearty` binary: parses the command line, sets up logging and runs
//! the library. Everything else lives in the library so tests can drive it.

use clap::{Parser, Subcommand};

/// jemalloc (see `hearty::allocator`): freed pages go back to the system.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hearty",
    version,
    about = "Actor-based saga orchestrator for breakfast delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (every role, or those of HEARTY_ROLES).
    Serve(Box<hearty::config::Config>),
    /// Inspect sagas of a running server.
    Sagas {
        #[command(subcommand)]
        command: SagasCommand,
        /// The server's base URL.
        #[arg(
            long,
            env = "HEARTY_URL",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        url: String,
        /// A manager's token (`HEARTY_MANAGER_TOKEN`, or one from `hearty token`).
        #[arg(long, env = "HEARTY_TOKEN", hide_env_values = true, global = true)]
        token: Option<hearty::config::Secret>,
    },
    /// Print a staff member's token, signed with the deployment's key.
    Token {
        /// manager, kitchen or delivery.
        #[arg(long)]
        role: hearty::auth::StaffRole,
        /// Who the token is for: the saga history records it with each
        /// manual operation.
        #[arg(long, default_value = "staff")]
        subject: String,
        /// How long the token is valid (`8h`, `30d`; at most 366 days).
        #[arg(long, default_value = "12h", value_parser = hearty::saga::definition::parse_duration)]
        ttl: std::time::Duration,
        /// The deployment's signing key.
        #[arg(long, env = "HEARTY_AUTH_KEY", hide_env_values = true)]
        auth_key: Option<hearty::config::Secret>,
        /// Without a key: the zero-setup server's folder, whose key signs.
        #[arg(long, env = "HEARTY_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
    /// Create (or update) one RabbitMQ user per role, with its permissions.
    BrokerUsers(hearty::cli::BrokerUsers),
    /// Copy a folder's databases (consistently, while its owner serves)
    /// into a new folder, with its home and its partitions' epochs.
    Backup {
        /// The folder to copy (the owner's HEARTY_DATA_DIR).
        #[arg(long, env = "HEARTY_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
        /// A new (or empty) folder for the backup.
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Make a new data folder of a backup; start the owner on it.
    Restore {
        /// The backup's folder.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The new (or empty) data folder.
        #[arg(long, env = "HEARTY_DATA_DIR")]
        data_dir: std::path::PathBuf,
        /// New ids start this far above the backup's largest (the owner may
        /// have given out ids after the backup).
        #[arg(long, default_value_t = hearty::cli::backup::DEFAULT_ID_GAP)]
        id_gap: i64,
    },
    /// Manage the read models.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
}

#[derive(Subcommand)]
enum SagasCommand {
    /// One line per saga.
    List {
        /// Only sagas in this state (Running, Completed, Compensating, Compensated, Failed).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Steps, what it waits on, messages in flight and the full history.
    Show { id: String },
}

#[derive(Subcommand)]
enum ViewsCommand {
    /// Recompute every read model from the write side (which is only read).
    Rebuild {
        /// Folder of the SQLite files.
        #[arg(long, env = "HEARTY_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn,actix_server=warn".into()),
        )
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Serve(config) => {
            hearty::allocator::return_freed_pages_in_background();
            actix::System::new().block_on(hearty::app::run(*config, shutdown_signal()))
        }
        Command::Sagas {
            command,
            url,
            token,
        } => {
            let server = hearty::cli::Server {
                url: &url,
                token: token.as_ref(),
            };
            let out = match command {
                SagasCommand::List { state, limit } => {
                    hearty::cli::sagas_list(&server, state.as_deref(), limit)
                }
                SagasCommand::Show { id } => hearty::cli::sagas_show(&server, &id),
            };
            out.map(|text| print!("{text}"))
        }
        Command::Token {
            role,
            subject,
            ttl,
            auth_key,
            data_dir,
        } => hearty::cli::staff_token(auth_key.as_ref(), &data_dir, role, &subject, ttl)
            .map(|token| println!("{token}")),
        Command::BrokerUsers(args) => hearty::cli::broker_users(&args).map(|text| print!("{text}")),
        Command::Backup { data_dir, to } => hearty::cli::backup::backup(&data_dir, &to).map(|m| {
            for f in &m.files {
                println!("{}: {} bytes, epochs {:?}", f.name, f.bytes, f.epochs);
            }
            println!("backed up {} into {}", data_dir.display(), to.display());
        }),
        Command::Restore {
            from,
            data_dir,
            id_gap,
        } => hearty::cli::backup::restore(&from, &data_dir, id_gap).map(|m| {
            println!(
                "restored the backup of {} (home {}) into {}: start its owner on it",
                m.taken_at,
                m.home.as_deref().unwrap_or("-"),
                data_dir.display()
            );
        }),
        Command::Views {
            command: ViewsCommand::Rebuild { data_dir },
        } => {
            let mut config = hearty::config::Config::defaults();
            config.data_dir = data_dir;
            actix::System::new()
                .block_on(hearty::views::rebuild(&config))
                .map(|counts| {
                    for (kind, n) in counts {
                        println!("{}: rebuilt from {n} events", kind.as_str());
                    }
                })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearty: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
