//! Support shared by every integration test binary (`mod support;`): a fresh, empty
//! database per test on either backend, dropped again when the test ends, and
//! [`backend_tests!`], which turns one test body into one test per backend.
//!
//! Nothing here knows about the schema except [`raw`], which reads and writes tables
//! directly for the few checks the `Store` trait cannot express.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod app;
pub mod raw;
pub mod replicas;
pub mod rotation;
pub mod tokens;

use std::fmt::Write as _;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// The backend a test database runs on: the store's own notion, so a test can compare it
/// with what `keyward::store::Backend::from_url` makes of the URL.
pub use keyward::store::Backend;

/// Where the tests may create and drop databases: `KEYWARD_TEST_PG_URL`, by default the
/// local server `scripts/test.sh` starts.
pub fn pg_admin_url() -> String {
    std::env::var("KEYWARD_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test. Dropping it removes the database, so tests run in
/// parallel without seeing each other's rows and leave nothing behind.
pub struct TestDatabase {
    /// What `keyward::store::connect` takes.
    pub url: String,
    pub backend: Backend,
    /// What must go when the test ends.
    cleanup: Cleanup,
}

enum Cleanup {
    /// A database on the shared server, dropped through the admin connection.
    Postgres { admin_url: String, name: String },
    /// The directory holding the SQLite file; removing it removes the database.
    Sqlite(TempDir),
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Postgres => TestDatabase::postgres().await,
            Backend::Sqlite => TestDatabase::sqlite(),
        }
    }

    /// Creates `keyward_test_<16 random hex digits>` on the server at [`pg_admin_url`].
    pub async fn postgres() -> TestDatabase {
        let admin_url = pg_admin_url();
        let name = format!("keyward_test_{}", random_hex(8));
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {} ({e}); start it (scripts/test.sh does) or set KEYWARD_TEST_PG_URL",
                without_password(&admin_url)
            )
        });
        // The name is our own hex string: nothing to escape.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        TestDatabase {
            url: with_database(&admin_url, &name),
            backend: Backend::Postgres,
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    /// A `keyward.db` file in a new temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::Builder::new()
            .prefix("keyward_test_")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().join("keyward.db");
        TestDatabase {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            backend: Backend::Sqlite,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A connection that bypasses the store, for checks on the tables themselves.
    pub async fn raw(&self) -> raw::RawConnection {
        raw::RawConnection::connect(self.backend, &self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            return; // the TempDir removes the SQLite file when it drops
        };
        // Drop is synchronous and usually runs inside the test's (current-thread) runtime,
        // which cannot be blocked on from within: a thread of our own with a runtime of its
        // own does the async work, and we wait for it.
        let (admin_url, db_name) = (admin_url.clone(), name.clone());
        let outcome = std::thread::spawn(move || drop_postgres_database(&admin_url, &db_name)).join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {name}: {e}"),
            Err(_) => eprintln!("warning: dropping test database {name} panicked"),
        }
    }
}

fn drop_postgres_database(admin_url: &str, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut admin = PgConnection::connect(admin_url).await?;
        // FORCE ends the connections the store's pool may still hold.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(())
    })
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).unwrap_or_else(|_| panic!("the system random source failed"));
    buf.iter().fold(String::with_capacity(bytes * 2), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// `url` with its path (the database name) replaced by `/name`, query string kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let root = base[authority..].find('/').map_or(base, |i| &base[..authority + i]);
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// The URL fit for a panic message: `user:password@` becomes `user@`.
fn without_password(url: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    match (url[authority..].find('@'), url[authority..].find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}", &url[..authority + colon], &url[authority + at..])
        }
        _ => url.to_owned(),
    }
}

/// Instantiates each named test once per backend. A test is written once, as
/// `async fn name(db: TestDatabase)`; this makes `postgres::name` and `sqlite::name`,
/// each on its own fresh database. Attributes before a name (e.g. `#[ignore]`) are copied
/// onto both.
///
/// ```ignore
/// mod support;
/// use support::TestDatabase;
///
/// async fn migrations_are_idempotent(db: TestDatabase) { /* ... */ }
///
/// support::backend_tests!(migrations_are_idempotent);
/// ```
macro_rules! backend_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod postgres {
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::TestDatabase::postgres().await).await
                }
            )*
        }

        mod sqlite {
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::TestDatabase::sqlite()).await
                }
            )*
        }
    };
}
pub(crate) use backend_tests;
