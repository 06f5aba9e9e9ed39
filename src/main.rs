//! `realtide serve` (the default) and `realtide token`.

use std::process::ExitCode;

use clap::Parser;
use realtide::config::{Cli, Command, Config, TokenArgs};
use serde_json::{Map, Value};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(config)) => serve(*config),
        None => serve(Config::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtide: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let listener = realtide::server::bind(&config.bind)
            .map_err(|e| format!("cannot bind {}: {e}", config.bind))?;
        let server = realtide::server::start(listener, config).map_err(|e| e.to_string())?;
        server.run_until_signal().await.map_err(|e| e.to_string())
    })
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
