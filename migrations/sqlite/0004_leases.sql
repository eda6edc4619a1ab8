-- Leases: which replica runs a singleton background job (the rotation loop). A holder
-- renews its lease every tick; another replica takes over once it has expired.

CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
