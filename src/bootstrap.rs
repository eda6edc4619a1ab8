//! First-start conveniences of embedded mode, and the refusals of production mode: where
//! the master keys and admin secrets come from when the configuration does not give them.
//!
//! Embedded (SQLite): a development master key is generated into a 0600 file with a loud
//! warning, and an admin secret is generated, printed once, and kept only as a digest.
//! PostgreSQL: both must be configured; start-up stops otherwise.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::Settings;
use crate::crypto::{MasterKeys, hex, random_bytes};
use crate::http::auth::{SecretSet, digest};
use crate::store::{Backend, Store};

const ADMIN_DIGEST_META: &str = "generated_admin_secret_sha256";

pub fn master_keys(settings: &Settings, backend: Backend) -> anyhow::Result<MasterKeys> {
    if let Some(spec) = &settings.master_keys {
        return MasterKeys::parse(spec.expose()).context("invalid setting `master_keys` (KEYWARD_MASTER_KEYS)");
    }
    if !backend.is_embedded() {
        bail!(
            "KEYWARD_MASTER_KEYS is required with PostgreSQL: private keys are encrypted under it. \
             Generate one with `keyward kek generate`."
        );
    }
    let path = &settings.master_key_file;
    if path.exists() {
        return read_key_file(path);
    }
    let spec = MasterKeys::generate_spec("dev").map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private_file(path, spec.as_bytes())
        .with_context(|| format!("writing development master key file {}", path.display()))?;
    tracing::warn!(file = %path.display(), "generated a DEVELOPMENT master key");
    eprintln!(
        "\n\
         ************************************************************************\n\
         * WARNING: generated a development master key in {}\n\
         * Private keys in the database are encrypted under it: losing the file\n\
         * loses the keys. Do not use this in production: set\n\
         * KEYWARD_MASTER_KEYS (see `keyward kek generate`).\n\
         ************************************************************************\n",
        path.display()
    );
    MasterKeys::parse(&spec).context("generated master key")
}

fn read_key_file(path: &Path) -> anyhow::Result<MasterKeys> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "master key file is readable by others");
        }
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading master key file {}", path.display()))?;
    tracing::warn!(file = %path.display(), "using the DEVELOPMENT master key file; set KEYWARD_MASTER_KEYS in production");
    MasterKeys::parse(text.trim()).with_context(|| format!("invalid master key file {}", path.display()))
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

pub async fn admin_secrets(settings: &Settings, backend: Backend, store: &dyn Store) -> anyhow::Result<SecretSet> {
    if !settings.admin_secrets.is_empty() {
        return Ok(SecretSet::from_secrets(settings.admin_secrets.iter().map(|s| s.expose())));
    }
    if !backend.is_embedded() {
        bail!("KEYWARD_ADMIN_SECRETS is required with PostgreSQL");
    }
    if let Some(hex) = store.get_meta(ADMIN_DIGEST_META).await? {
        tracing::info!("using the admin secret generated at first start (set KEYWARD_ADMIN_SECRETS to replace it)");
        return Ok(SecretSet::from_digests(vec![decode_hex(&hex).context("stored admin secret digest")?]));
    }
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let digest = digest(&secret);
    if !store.insert_meta(ADMIN_DIGEST_META, &hex(&digest)).await? {
        // Another process generated one first; use that.
        return Box::pin(admin_secrets(settings, backend, store)).await;
    }
    // Printed to the terminal once, on purpose, and never logged.
    eprintln!(
        "\n\
         ************************************************************************\n\
         * Generated admin secret (shown once, never again):\n\
         *\n\
         *     {secret}\n\
         *\n\
         * Send it as the x-admin-secret header. Set KEYWARD_ADMIN_SECRETS to\n\
         * use your own secrets instead.\n\
         ************************************************************************\n"
    );
    Ok(SecretSet::from_digests(vec![digest]))
}

fn decode_hex(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .context("not hex")?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = digest("x");
        assert_eq!(decode_hex(&hex(&d)).unwrap(), d);
        assert!(decode_hex("zz").is_err());
    }
}
