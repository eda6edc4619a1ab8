//! The composition root. [`Services`] assembles store, keys and registry from `Settings`
//! (used by `serve` and by the CLI); [`Application`] adds the HTTP server and background
//! tasks. Tests build the same `Application` on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::bootstrap;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::domain::Actor;
use crate::fanout::{self, Fanout};
use crate::health::{self, Health};
use crate::http::{self, AppState, HttpSettings};
use crate::keyset::Registry;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::service::{
    AuditSink, KeyService, KeyServiceDeps, Notifier, Replicator, Rotator, ServiceSettings, SessionService, prune_loop,
};
use crate::store::{self, Backend, Store};
use crate::token::Verifier;
use crate::token::cache::VerifiedCache;
use crate::token::revocation::Revocations;

/// The use cases wired to their dependencies, without any server.
pub struct Services {
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    pub keys: Arc<KeyService>,
    pub sessions: Arc<SessionService>,
    pub verifier: Arc<Verifier>,
    pub replicator: Arc<Replicator>,
    pub rotator: Arc<Rotator>,
    pub fanout: Arc<dyn Fanout>,
    pub metrics: Arc<Metrics>,
}

impl Services {
    /// Connects, migrates, and loads every tenant's key set (which proves the master keys
    /// decrypt what is stored).
    pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Services> {
        let fanout = fanout::from_settings(settings.redis_url.as_ref().map(|u| u.expose()), &settings.redis_prefix)
            .context("REDIS_URL")?;
        Self::build_with_fanout(settings, clock, fanout).await
    }

    /// As [`Services::build`], with a given fan-out (tests share one in-process fan-out
    /// between several replicas).
    pub async fn build_with_fanout(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        fanout: Arc<dyn Fanout>,
    ) -> anyhow::Result<Services> {
        let url = settings.database_url.expose();
        let backend = Backend::from_url(url)?;
        let store = store::connect(url).await.context("connecting to the database (DATABASE_URL)")?;
        let master = Arc::new(bootstrap::master_keys(settings, backend)?);
        let metrics = Arc::new(Metrics::new());
        let service_settings = ServiceSettings {
            jwks_max_age: settings.jwks_max_age,
            leeway: settings.leeway,
            tenant_defaults: settings.tenant_defaults.clone(),
            public_url: settings.public_url(),
        };
        let registry = Arc::new(Registry::default());
        let cache = Arc::new(VerifiedCache::new(settings.verify_cache_entries));
        let replica = replica_id()?;
        let notifier = Arc::new(Notifier::new(Arc::clone(&fanout), replica.clone(), Arc::clone(&metrics)));
        let keys = Arc::new(KeyService::new(KeyServiceDeps {
            store: Arc::clone(&store),
            master,
            clock: Arc::clone(&clock),
            registry: Arc::clone(&registry),
            cache: Arc::clone(&cache),
            notifier,
            metrics: Arc::clone(&metrics),
            settings: service_settings,
        }));
        let tenants = keys.load_all().await.context("loading key sets (is KEYWARD_MASTER_KEYS the right key?)")?;
        tracing::info!(backend = store.backend(), tenants, "key sets loaded");
        let revocations = Arc::new(Revocations::default());
        let verifier = Arc::new(Verifier::new(
            registry,
            Arc::clone(&revocations),
            Arc::clone(&metrics),
            clock,
            settings.leeway,
            cache,
        ));
        let sessions =
            Arc::new(SessionService::new(Arc::clone(&keys), Arc::clone(&revocations), settings.refresh_reuse_grace));
        let replicator = Arc::new(Replicator::new(Arc::clone(&keys), revocations));
        // Loads every live revocation before serving: a restarted replica rejects revoked
        // sessions from its first request.
        replicator.reconcile().await.context("loading revocations")?;
        let rotator = Arc::new(Rotator::new(
            Arc::clone(&keys),
            replica,
            settings.rotation_interval.as_std(),
            settings.token_ledger_retention,
        ));
        Ok(Services { backend, store, keys, sessions, verifier, replicator, rotator, fanout, metrics })
    }
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: axum::Router,
    state: AppState,
    tasks: Vec<JoinHandle<()>>,
    shutdown_grace: std::time::Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        let services = Services::build(&settings, clock).await?;
        Self::from_services(settings, services).await
    }

    /// Several replicas in one process (tests) can share one in-process fan-out.
    pub async fn build_with_fanout(
        settings: Settings,
        clock: Arc<dyn Clock>,
        fanout: Arc<dyn Fanout>,
    ) -> anyhow::Result<Application> {
        let services = Services::build_with_fanout(&settings, clock, fanout).await?;
        Self::from_services(settings, services).await
    }

    async fn from_services(settings: Settings, services: Services) -> anyhow::Result<Application> {
        let admin_secrets = bootstrap::admin_secrets(&settings, services.backend, services.store.as_ref()).await?;
        let issuer_secrets = http::auth::SecretSet::from_secrets(settings.issuer_secrets.iter().map(|s| s.expose()));

        services
            .keys
            .ensure_tenant(&settings.default_tenant, &Actor::system("startup"))
            .await
            .context("creating the default tenant")?;
        if let Some(current) = &settings.jwt_secret {
            let changed = services
                .keys
                .seed_secrets(
                    &settings.default_tenant,
                    current,
                    settings.jwt_secret_old.as_ref(),
                    settings.jwt_secret_old_not_after,
                )
                .await
                .context("installing JWT_SECRET / JWT_SECRET_OLD")?;
            if changed {
                tracing::info!(tenant = %settings.default_tenant, "HS256 secrets set from JWT_SECRET / JWT_SECRET_OLD");
            }
        } else if settings.jwt_secret_old.is_some() {
            anyhow::bail!("JWT_SECRET_OLD is set without JWT_SECRET");
        }

        let health = Arc::new(Health::default());
        health.set_database(health::DependencyState::Up, &services.metrics);
        if services.fanout.is_shared() {
            let up = matches!(tokio::time::timeout(Duration::from_secs(1), services.fanout.ping()).await, Ok(Ok(())));
            let state = if up { health::DependencyState::Up } else { health::DependencyState::Down };
            if !up {
                tracing::warn!("redis is unreachable; serving degraded until it answers");
            }
            health.set_redis(state, &services.metrics);
        }
        let limiter = Arc::new(RateLimiter::new(settings.rate_limits.clone()));
        let (audit, audit_writer) = AuditSink::new(Arc::clone(&services.store), Arc::clone(&services.metrics));
        let cache_control = format!("public, max-age={}", settings.jwks_max_age.as_secs());
        let state = AppState {
            keys: Arc::clone(&services.keys),
            sessions: Arc::clone(&services.sessions),
            verifier: Arc::clone(&services.verifier),
            metrics: Arc::clone(&services.metrics),
            health: Arc::clone(&health),
            limiter: Arc::clone(&limiter),
            admin_secrets: Arc::new(admin_secrets),
            issuer_secrets: Arc::new(issuer_secrets),
            audit,
            default_tenant: settings.default_tenant.clone(),
            public_url: settings.public_url().into(),
            jwks_cache_control: HeaderValue::from_str(&cache_control).context("jwks_max_age")?,
        };
        let http_settings = HttpSettings {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout.as_std(),
            allowed_origins: settings.allowed_origins.clone(),
            https: settings.public_url().starts_with("https://"),
        };
        let router = http::router(state.clone(), &http_settings);

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {} (KEYWARD_LISTEN)", settings.listen))?;
        let addr = listener.local_addr()?;

        let tasks = vec![
            tokio::spawn(audit_writer),
            tokio::spawn(health::probe_database(
                Arc::clone(&health),
                Arc::clone(&services.store),
                Arc::clone(&services.metrics),
                settings.health_interval.as_std(),
            )),
            tokio::spawn(Arc::clone(&services.replicator).run(settings.reconcile_interval.as_std())),
            tokio::spawn(Arc::clone(&services.rotator).run(settings.rotation_interval.as_std())),
            tokio::spawn(health::probe_fanout(
                Arc::clone(&health),
                Arc::clone(&services.fanout),
                Arc::clone(&services.metrics),
                settings.health_interval.as_std(),
            )),
            tokio::spawn(prune_limits(Arc::clone(&limiter))),
            tokio::spawn(prune_loop(
                Arc::clone(services.verifier.revocations()),
                Arc::clone(&services.keys),
                settings.reconcile_interval.as_std(),
            )),
        ];
        health.set_loaded();
        Ok(Application { listener, addr, router, state, tasks, shutdown_grace: settings.shutdown_grace.as_std() })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state handlers see, for tests and embedding.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, marks itself unready and
    /// gives in-flight requests `shutdown_grace` to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let health = Arc::clone(&self.state.health);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            health.set_stopping();
            tracing::info!("shutting down");
            let _ = stopped_tx.send(());
        };
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, service).with_graceful_shutdown(signal);
        tracing::info!(addr = %self.addr, "listening");
        let grace = self.shutdown_grace;
        let server = tokio::spawn(async move { server.await });
        let result = tokio::select! {
            r = server => r.context("server task")?.context("serving HTTP"),
            () = async {
                let _ = stopped_rx.await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("in-flight requests did not finish within the shutdown grace");
                Ok(())
            }
        };
        for task in self.tasks {
            task.abort();
        }
        result
    }
}

/// Forgets idle rate-limit buckets every ten seconds.
async fn prune_limits(limiter: Arc<RateLimiter>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticker.tick().await;
        limiter.prune(std::time::Instant::now());
    }
}

/// A random id for this process, so it can recognise its own notices.
fn replica_id() -> anyhow::Result<String> {
    Ok(crate::crypto::hex(&crate::crypto::random_bytes::<8>()?))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
        () = ctrl_c => {},
        () = term => {},
    }
}
