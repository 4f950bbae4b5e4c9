//! `usersig sign|verify`: an admin UserSig from the app's key, or the claims
//! of one (or why it is refused).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::Subcommand;

use crate::cli::app::AppArgs;
use crate::clock;
use crate::tencent::usersig::{self, Claims};

#[derive(Debug, Subcommand)]
pub enum UsersigCommand {
    /// Print a UserSig for the app admin.
    Sign(SignArgs),
    /// Check a UserSig; prints its claims, or why it is refused (exit 1).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Validity in seconds.
    #[arg(long, default_value_t = 86_400 * 180)]
    pub expire: u64,
    /// Signing time in unix seconds (default: now).
    #[arg(long)]
    pub time: Option<u64>,
    /// Optional userbuf, base64.
    #[arg(long)]
    pub userbuf_base64: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The app, the identifier the UserSig must be for, and the key.
    #[command(flatten)]
    pub app: AppArgs,
    /// Check as of this unix time (default: now).
    #[arg(long)]
    pub at: Option<u64>,
    /// The UserSig; `-` or absent reads standard input.
    pub usersig: Option<String>,
}

impl UsersigCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Sign(args) => sign(args),
            Self::Verify(args) => verify(args),
        }
    }
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = args.app.secret.load()?;
    let userbuf = args
        .userbuf_base64
        .map(|b| BASE64.decode(b))
        .transpose()
        .context("--userbuf-base64 is not base64")?;
    let claims = Claims {
        identifier: args.app.identifier()?,
        sdkappid: args.app.sdkappid()?,
        time: args.time.unwrap_or_else(clock::now_secs),
        expire: args.expire,
        userbuf,
    };
    println!("{}", usersig::sign(&key, &claims).expose());
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = args.app.secret.load()?;
    let sig = match args.usersig {
        Some(sig) if sig != "-" => sig,
        _ => read_stdin()?,
    };
    let now = args.at.unwrap_or_else(clock::now_secs);
    match usersig::verify(
        &sig,
        &key,
        args.app.sdkappid()?,
        &args.app.identifier()?,
        now,
    ) {
        Ok(claims) => {
            let report = serde_json::json!({
                "valid": true,
                "identifier": claims.identifier,
                "sdkappid": claims.sdkappid,
                "time": claims.time,
                "expire": claims.expire,
                "expires_at": claims.expires_at(),
                "userbuf_base64": claims.userbuf.map(|b| BASE64.encode(b)),
            });
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The UserSig from standard input, without surrounding whitespace.
fn read_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read the UserSig from standard input")?;
    Ok(input.trim().to_string())
}
