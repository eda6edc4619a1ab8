//! The command line. `serve` runs the service; the other commands act on the same database
//! as the server, so an operator without HTTP access can still act during an incident.
//! Changes made here reach running replicas through their reconciliation loop.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config::Settings;
use crate::domain::{Actor, Period, PolicyPatch, SigningAlg, TenantId};
use crate::service::NewTenant;
use crate::startup::{Application, Services, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Key management and token verification: JWKS with scheduled rotation, token issuing and verification, revocation",
    long_about = "Keyward owns tenants' signing keys: it publishes their JWKS, rotates keys on a schedule with \
        overlap windows, signs and verifies tokens, and revokes keys and sessions.\n\n\
        Configuration: config/default.toml documents every setting; environment variables such as DATABASE_URL, \
        KEYWARD_MASTER_KEYS and KEYWARD_ADMIN_SECRETS override it.\n\n\
        Quick start: `keyward serve`, then `curl localhost:8080/.well-known/jwks.json`."
)]
pub struct Cli {
    /// A TOML file overriding config/default.toml (also: KEYWARD_CONFIG).
    #[arg(long, global = true, env = "KEYWARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (JWKS, verification, admin API) until SIGINT/SIGTERM.
    Serve,
    /// Apply pending database migrations and exit (serve also does this at start).
    Migrate,
    /// Create and list tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// List, stage, activate, rotate and revoke a tenant's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Master keys (KEKs) that encrypt private keys at rest.
    #[command(subcommand)]
    Kek(KekCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant with its first active key.
    Create(CreateTenantArgs),
    /// List tenants.
    List,
}

#[derive(Debug, Args)]
pub struct CreateTenantArgs {
    /// Tenant id: a slug of a-z, 0-9 and '-'.
    pub id: String,
    /// Token issuer (default: <public url>/a/<id>).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Accepted audience; repeat for several (default: the tenant id).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// ES256, EdDSA or RS256.
    #[arg(long, value_parser = parse_alg)]
    pub alg: Option<SigningAlg>,
    /// e.g. 90d
    #[arg(long)]
    pub rotation_period: Option<Period>,
    /// e.g. 7d
    #[arg(long)]
    pub overlap: Option<Period>,
    /// e.g. 2d
    #[arg(long)]
    pub stage_lead: Option<Period>,
    /// e.g. 15m
    #[arg(long)]
    pub access_token_ttl: Option<Period>,
    /// e.g. 30d
    #[arg(long)]
    pub refresh_token_ttl: Option<Period>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show every key with its state and lifecycle times.
    List(TenantArg),
    /// Publish a new key that does not sign yet.
    Stage {
        #[command(flatten)]
        tenant: TenantArg,
        /// ES256, EdDSA or RS256 (default: the tenant's signing_alg).
        #[arg(long, value_parser = parse_alg)]
        alg: Option<SigningAlg>,
    },
    /// Make a staged key the signing key; the current one retires.
    Activate {
        #[command(flatten)]
        tenant: TenantArg,
        kid: String,
        /// Activate even if published for less than stage_lead.
        #[arg(long)]
        force: bool,
    },
    /// Replace the signing key now (with a staged key if there is one).
    Rotate {
        #[command(flatten)]
        tenant: TenantArg,
        /// Revoke the old key instead of retiring it (after a compromise).
        #[arg(long)]
        emergency: bool,
    },
    /// Revoke one key, or every active key with --all-active.
    Revoke {
        #[command(flatten)]
        tenant: TenantArg,
        /// The kid to revoke.
        #[arg(required_unless_present = "all_active", conflicts_with = "all_active")]
        kid: Option<String>,
        /// Revoke every active key (a replacement is activated at once).
        #[arg(long)]
        all_active: bool,
    },
}

#[derive(Debug, Args)]
pub struct TenantArg {
    /// The tenant id.
    #[arg(long, short)]
    pub tenant: String,
}

#[derive(Debug, Subcommand)]
pub enum KekCommand {
    /// Print a new master key as `id:base64` for KEYWARD_MASTER_KEYS.
    Generate {
        /// Its id (e.g. the date): [A-Za-z0-9_-]{1,32}.
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Re-wrap every stored data key under the first configured master key (online,
    /// idempotent). Afterwards older master keys can be removed from KEYWARD_MASTER_KEYS.
    Rotate,
}

fn parse_alg(s: &str) -> Result<SigningAlg, String> {
    SigningAlg::parse(s).ok_or_else(|| "expected ES256, EdDSA or RS256".to_owned())
}

fn tenant(raw: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(raw).map_err(|e| anyhow::anyhow!("{e}"))
}

fn actor() -> Actor {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Actor::system(&format!("cli:{user}"))
}

fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Kek(KekCommand::Generate { id }) = &cli.command {
        let spec = crate::crypto::MasterKeys::generate_spec(id).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::crypto::MasterKeys::parse(&spec).context("--id")?;
        println!("{}", spec.as_str());
        return Ok(());
    }
    let settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    match cli.command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            crate::store::connect(settings.database_url.expose()).await.context("migrating the database")?;
            println!("migrations applied");
            Ok(())
        }
        command => {
            let services = Services::build(&settings, Arc::new(SystemClock)).await?;
            admin(command, &services).await
        }
    }
}

async fn admin(command: Command, services: &Services) -> anyhow::Result<()> {
    let keys = &services.keys;
    match command {
        Command::Tenants(TenantsCommand::List) => print(&keys.list_tenants().await?),
        Command::Tenants(TenantsCommand::Create(a)) => {
            let new = NewTenant {
                id: tenant(&a.id)?,
                issuer: a.issuer,
                audiences: (!a.audiences.is_empty()).then_some(a.audiences),
                policy: PolicyPatch {
                    signing_alg: a.alg,
                    rotation_period: a.rotation_period,
                    overlap: a.overlap,
                    stage_lead: a.stage_lead,
                    access_token_ttl: a.access_token_ttl,
                    refresh_token_ttl: a.refresh_token_ttl,
                },
            };
            let (tenant, active_kid) = keys.create_tenant(new, &actor()).await?;
            print(&serde_json::json!({ "tenant": tenant, "active_kid": active_kid }))
        }
        Command::Keys(KeysCommand::List(t)) => print(&keys.list_keys(&tenant(&t.tenant)?).await?),
        Command::Keys(KeysCommand::Stage { tenant: t, alg }) => {
            print(&keys.stage(&tenant(&t.tenant)?, alg, &actor()).await?)
        }
        Command::Keys(KeysCommand::Activate { tenant: t, kid, force }) => {
            print_changes(&keys.activate(&tenant(&t.tenant)?, &kid, force, &actor()).await?)
        }
        Command::Keys(KeysCommand::Rotate { tenant: t, emergency }) => {
            print_changes(&keys.rotate(&tenant(&t.tenant)?, emergency, &actor()).await?)
        }
        Command::Keys(KeysCommand::Revoke { tenant: t, kid, all_active: _ }) => {
            let (changes, active) = keys.revoke(&tenant(&t.tenant)?, kid.as_deref(), &actor()).await?;
            print_changes(&changes)?;
            println!("active key: {}", active.unwrap_or_else(|| "none".into()));
            Ok(())
        }
        Command::Kek(KekCommand::Rotate) => {
            let report = keys.rotate_kek(&actor()).await?;
            print(&report)?;
            println!(
                "every data key is now wrapped by `{}`; other master keys can be removed from KEYWARD_MASTER_KEYS",
                services.keys.master_key_id()
            );
            Ok(())
        }
        Command::Serve | Command::Migrate | Command::Kek(KekCommand::Generate { .. }) => Ok(()),
    }
}

fn print_changes(changes: &[crate::service::KeyChange]) -> anyhow::Result<()> {
    if changes.is_empty() {
        println!("nothing changed");
    }
    for c in changes {
        if c.from == c.to {
            println!("{}: created ({})", c.kid, c.to.as_str());
        } else {
            println!("{}: {} -> {}", c.kid, c.from.as_str(), c.to.as_str());
        }
    }
    Ok(())
}
