//! Migrations are compiled into the binary (no files needed at run time) and applied at
//! start-up and by `keyward migrate`. Each backend has its own SQL under `migrations/`.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

type Source = (i64, &'static str, &'static str);

const POSTGRES: &[Source] = &[
    (1, "keys", include_str!("../../migrations/postgres/0001_keys.sql")),
    (2, "tokens", include_str!("../../migrations/postgres/0002_tokens.sql")),
    (3, "revocations", include_str!("../../migrations/postgres/0003_revocations.sql")),
    (4, "leases", include_str!("../../migrations/postgres/0004_leases.sql")),
    (5, "hardening", include_str!("../../migrations/postgres/0005_hardening.sql")),
];

const SQLITE: &[Source] = &[
    (1, "keys", include_str!("../../migrations/sqlite/0001_keys.sql")),
    (2, "tokens", include_str!("../../migrations/sqlite/0002_tokens.sql")),
    (3, "revocations", include_str!("../../migrations/sqlite/0003_revocations.sql")),
    (4, "leases", include_str!("../../migrations/sqlite/0004_leases.sql")),
    (5, "hardening", include_str!("../../migrations/sqlite/0005_hardening.sql")),
];

fn migrator(sources: &[Source]) -> Migrator {
    Migrator::with_migrations(
        sources
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(*version, Cow::Borrowed(name), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

pub(super) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

pub(super) fn sqlite() -> Migrator {
    migrator(SQLITE)
}
