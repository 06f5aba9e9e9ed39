//! `realtide serve` (the default), `demo`, `check`, `token` and `capture remove`.

use std::process::ExitCode;

use clap::Parser;
use realtide::changes::tables::TableRef;
use realtide::config::{CaptureCommand, Cli, Command, Config, LogFormat, TokenArgs};
use serde_json::{Map, Value};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::Demo(config)) => demo(*config),
        Some(Command::Check(config)) => check(&config),
        Some(Command::Capture(CaptureCommand::Remove(args))) => {
            capture_remove(&args.database_url, &args.schema, args.table.as_deref())
        }
        None => serve(*cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtide: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at `--log-level` (or `RUST_LOG`), as text or JSON lines.
fn init_logs(config: &Config) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&config.log_level)
            .map_err(|e| format!("--log-level `{}`: {e}", config.log_level))?,
    };
    // Colours only for a person at a terminal, never into a file or a pipe.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

fn serve(config: Config) -> Result<(), String> {
    init_logs(&config)?;
    actix_web::rt::System::new().block_on(async move {
        let address = config.listen_address();
        let listener = realtide::server::bind_or_explain(&address)?;
        let server = realtide::server::start(listener, config).map_err(|e| e.to_string())?;
        server.run_until_signal().await.map_err(|e| e.to_string())
    })
}

fn demo(mut config: Config) -> Result<(), String> {
    init_logs(&config)?;
    // The demo seeds its own `orders` table: it keeps a database of its
    // own unless one is named, so it never meets the user's `realtide.db`.
    let named = std::env::var_os("REALTIDE_DATABASE_URL").is_some()
        || std::env::args().any(|a| a.starts_with("--database-url"));
    if !named {
        config.database_url = realtide::demo::DEMO_DATABASE.to_string();
    }
    realtide::demo::run(config)
}

fn check(config: &Config) -> Result<(), String> {
    let findings = realtide::check::run(config);
    for finding in &findings {
        let mark = if finding.ok { "ok  " } else { "FAIL" };
        println!("{mark} {:<9} {}", finding.what, finding.detail);
    }
    match findings.iter().filter(|f| !f.ok).count() {
        0 => Ok(()),
        n => Err(format!("{n} check(s) failed")),
    }
}

fn capture_remove(url: &str, schema: &str, table: Option<&str>) -> Result<(), String> {
    let table = table
        .map(|t| {
            if t.contains('=') {
                Err(format!(
                    "--table `{t}`: name a table (`orders`, `app.items`)"
                ))
            } else {
                TableRef::parse(t).map_err(|e| format!("--table {e}"))
            }
        })
        .transpose()?;
    let done = realtide::changes::remove::remove(url, schema, table.as_ref())
        .map_err(|e| e.to_string())?;
    if done.is_empty() {
        println!("nothing to remove");
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}

fn token(args: TokenArgs) -> Result<(), String> {
    realtide::config::check_jwt_secret(&args.jwt_secret)?;
    let extra = match args.claims.as_deref() {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err("--claims must be a JSON object".into()),
        },
    };
    let token = realtide::auth::token::sign(&args.jwt_secret, &args.sub, args.ttl, extra)?;
    println!("{token}");
    Ok(())
}
