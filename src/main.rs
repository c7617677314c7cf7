//! The `herald` binary: parse arguments, load and validate config, start logging, bind,
//! serve until SIGTERM/SIGINT, drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::Config;
use herald::reload::Source;
use herald::server::{self, Listeners, RunOptions};
use herald::settings::Settings;

/// mimalloc: the publish path allocates per event (encoded bytes, parsed fields), and
/// glibc malloc showed as the top cost in profiles of batched publishing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration that cannot be used (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A hardened Server-Sent Events broker"
)]
struct Cli {
    /// TOML config file layered over the embedded defaults (see deploy/herald.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Demo mode for local trials: with no auth.publish_keys, the public listener accepts
    /// publishes without a key. Never use it where the listener is reachable by others.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration, or the error that stops it from loading.
    CheckConfig,
    /// Check the path in front of herald as a browser sees it (proxy buffering,
    /// compression, caching, HTTP/2, Last-Event-ID, timeouts); exit 1 when a check fails.
    Doctor(DoctorArgs),
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// The events URL browsers use, e.g. https://example.com/events (a bare origin gets
    /// /events).
    url: String,
    /// Publish two test events here (POST), e.g. the admin listener's /publish.
    #[arg(long, requires = "key")]
    publish_url: Option<String>,
    /// Bearer key for --publish-url.
    #[arg(long, env = "HERALD_DOCTOR_KEY")]
    key: Option<String>,
    /// Channel for the test streams and events.
    #[arg(long, default_value = "herald-doctor")]
    channel: String,
    /// Hold a stream idle this many seconds and check that the path keeps it open.
    #[arg(long)]
    idle: Option<u64>,
    /// PEM CA certificate to trust for an https URL (a self-signed proxy).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// `herald doctor`: every check printed, exit 1 when one failed, 2 when it cannot run.
fn doctor(args: DoctorArgs) -> ExitCode {
    let options = herald::doctor::Options {
        url: args.url,
        publish_url: args.publish_url,
        key: args.key,
        channel: args.channel,
        idle: args.idle.map(std::time::Duration::from_secs),
        ca_file: args.ca_file,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald doctor: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(herald::doctor::run(&options)) {
        Ok(checks) => {
            for check in &checks {
                println!("{}", check.render());
            }
            let failed = checks
                .iter()
                .filter(|c| c.outcome == herald::doctor::Outcome::Fail)
                .count();
            if failed == 0 {
                println!("doctor: every check passed");
                ExitCode::SUCCESS
            } else {
                println!("doctor: {failed} check(s) failed");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("herald doctor: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The doctor checks a path from outside: it needs no config of its own.
    if let Some(Command::Doctor(_)) = cli.command {
        let Some(Command::Doctor(args)) = cli.command.take() else {
            unreachable!("matched just above")
        };
        return doctor(args);
    }
    // The objects that will run are built here, once: what check-config accepts is
    // what serves (a JWT key file that cannot be read stops the start).
    let settings = match Config::load(cli.config.as_deref())
        .and_then(|config| Settings::build(config, cli.demo))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        print!("{}", settings.config.to_toml());
        return ExitCode::SUCCESS;
    }
    // Kept until the server has stopped: shutting it down flushes queued spans.
    let telemetry = herald::telemetry::init(&settings.config.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions {
        demo: cli.demo,
        reload: Some(Source {
            path: cli.config.clone(),
            log_filter: telemetry.log_filter(),
        }),
    };
    let status = runtime.block_on(serve(settings, options));
    // Outside the runtime now, so the blocking exporter may run here.
    telemetry.shutdown();
    status
}

async fn serve(settings: Settings, options: RunOptions) -> ExitCode {
    let config = &settings.config;
    let listeners = match Listeners::bind(config).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let public = listeners
        .public
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = listeners
        .admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%public, %admin, demo = options.demo, "herald listening");
    if options.demo && config.auth.publish_keys.is_empty() {
        tracing::warn!(
            "demo mode: anyone who reaches {public} can publish; never run --demo in production"
        );
    }
    server::run(settings, options, listeners, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
