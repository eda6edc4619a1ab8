//! Envelope encryption of private key material at rest.
//!
//! Each secret is encrypted with AES-256-GCM under its own random data key (DEK); the DEK
//! is wrapped with AES-256-GCM under a master key (KEK) from configuration. Both layers bind
//! the owner (tenant and kid) as associated data, so a ciphertext copied onto another row
//! fails to decrypt instead of signing for the wrong tenant. Several master keys may be
//! configured: the first encrypts, all decrypt, which is what makes `keyward kek rotate`
//! possible without downtime.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;

/// A sealed secret as stored: which KEK wrapped the DEK, the wrapped DEK, and the
/// ciphertext. Both byte strings are `nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed").field("kek_id", &self.kek_id).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("sealed with master key `{0}`, which is not configured (KEYWARD_MASTER_KEYS)")]
    UnknownKek(String),
    #[error("decryption failed: wrong master key, or the stored data was altered")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MasterKeyError {
    #[error("no master key given")]
    Empty,
    #[error("master key entry {0} must look like `id:base64(32 bytes)`")]
    Shape(usize),
    #[error("master key id `{0}` must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")]
    Id(String),
    #[error("master key `{0}` is not standard base64 of exactly 32 bytes")]
    Material(String),
    #[error("master key id `{0}` appears twice")]
    Duplicate(String),
}

/// What an encrypted value belongs to; becomes the associated data of both layers.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// What kind of secret: `key` for signing keys, `hmac` for shared secrets.
    pub purpose: &'a str,
    pub tenant: &'a str,
    pub id: &'a str,
}

impl Owner<'_> {
    fn aad(&self, layer: &str) -> Vec<u8> {
        format!("keyward/v1/{layer}/{}/{}/{}", self.purpose, self.tenant, self.id).into_bytes()
    }
}

/// The configured master keys. Redacted in `Debug` (ids only).
pub struct MasterKeys {
    keys: Vec<(String, Zeroizing<[u8; KEY_LEN]>)>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys").field("ids", &self.ids().collect::<Vec<_>>()).finish()
    }
}

impl MasterKeys {
    /// Parses `id:base64,id:base64,...` (KEYWARD_MASTER_KEYS). Error messages name the
    /// offending id or position, never the material.
    pub fn parse(spec: &str) -> Result<MasterKeys, MasterKeyError> {
        let mut keys: Vec<(String, Zeroizing<[u8; KEY_LEN]>)> = Vec::new();
        for (index, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (id, material) = entry.split_once(':').ok_or(MasterKeyError::Shape(index + 1))?;
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(MasterKeyError::Id(id.to_owned()));
            }
            let decoded = Zeroizing::new(STANDARD.decode(material).map_err(|_| MasterKeyError::Material(id.into()))?);
            let key: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| MasterKeyError::Material(id.into()))?;
            if keys.iter().any(|(existing, _)| existing == id) {
                return Err(MasterKeyError::Duplicate(id.to_owned()));
            }
            keys.push((id.to_owned(), Zeroizing::new(key)));
        }
        if keys.is_empty() {
            return Err(MasterKeyError::Empty);
        }
        Ok(MasterKeys { keys })
    }

    /// A new random master key in the `id:base64` form, for development key files and
    /// `keyward kek generate`.
    pub fn generate_spec(id: &str) -> Result<Zeroizing<String>, EnvelopeError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new().fill(key.as_mut()).map_err(|_| EnvelopeError::Encrypt)?;
        Ok(Zeroizing::new(format!("{id}:{}", STANDARD.encode(key.as_ref()))))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The id of the key that encrypts.
    pub fn primary_id(&self) -> &str {
        // `parse` refuses an empty list, so there is always a first key.
        self.keys.first().map(|(id, _)| id.as_str()).unwrap_or_default()
    }

    pub fn seal(&self, plaintext: &[u8], owner: Owner<'_>) -> Result<Sealed, EnvelopeError> {
        let (kek_id, kek) = self.keys.first().ok_or(EnvelopeError::Encrypt)?;
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new().fill(dek.as_mut()).map_err(|_| EnvelopeError::Encrypt)?;
        Ok(Sealed {
            kek_id: kek_id.clone(),
            wrapped_dek: aead_seal(kek.as_ref(), dek.as_ref(), &owner.aad("dek"))?,
            ciphertext: aead_seal(dek.as_ref(), plaintext, &owner.aad("data"))?,
        })
    }

    pub fn open(&self, sealed: &Sealed, owner: Owner<'_>) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let dek = self.unwrap_dek(sealed, owner)?;
        aead_open(dek.as_ref(), &sealed.ciphertext, &owner.aad("data"))
    }

    /// Re-wraps the data key under the primary master key; the ciphertext is untouched.
    /// `None` when it already is wrapped by the primary key (so a re-run does nothing).
    pub fn rewrap(&self, sealed: &Sealed, owner: Owner<'_>) -> Result<Option<Sealed>, EnvelopeError> {
        let (primary_id, primary) = self.keys.first().ok_or(EnvelopeError::Encrypt)?;
        if &sealed.kek_id == primary_id {
            return Ok(None);
        }
        let dek = self.unwrap_dek(sealed, owner)?;
        Ok(Some(Sealed {
            kek_id: primary_id.clone(),
            wrapped_dek: aead_seal(primary.as_ref(), &dek, &owner.aad("dek"))?,
            ciphertext: sealed.ciphertext.clone(),
        }))
    }

    fn unwrap_dek(&self, sealed: &Sealed, owner: Owner<'_>) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| id == &sealed.kek_id)
            .ok_or_else(|| EnvelopeError::UnknownKek(sealed.kek_id.clone()))?;
        aead_open(kek.as_ref(), &sealed.wrapped_dek, &owner.aad("dek"))
    }
}

fn aead_seal(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| EnvelopeError::Encrypt)?;
    let mut buf = plaintext.to_vec();
    let nonce = key.seal_in_place_append_tag(Aad::from(aad), &mut buf).map_err(|_| EnvelopeError::Encrypt)?;
    let mut out = nonce.as_ref().to_vec();
    out.append(&mut buf);
    Ok(out)
}

fn aead_open(key: &[u8], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.len() < NONCE_LEN {
        return Err(EnvelopeError::Decrypt);
    }
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| EnvelopeError::Decrypt)?;
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::Decrypt)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let plain_len = key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| EnvelopeError::Decrypt)?.len();
    buf.truncate(plain_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(tenant: &'a str, id: &'a str) -> Owner<'a> {
        Owner { purpose: "key", tenant, id }
    }

    fn keys(spec: &[&str]) -> MasterKeys {
        MasterKeys::parse(&spec.join(",")).unwrap()
    }

    #[test]
    fn seal_and_open_round_trip() {
        let mk = MasterKeys::parse(&MasterKeys::generate_spec("k1").unwrap()).unwrap();
        let sealed = mk.seal(b"private", owner("t", "kid")).unwrap();
        assert_eq!(sealed.kek_id, "k1");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"private"));
        assert_eq!(mk.open(&sealed, owner("t", "kid")).unwrap().as_slice(), b"private");
    }

    #[test]
    fn ciphertext_moved_to_another_owner_does_not_open() {
        let mk = MasterKeys::parse(&MasterKeys::generate_spec("k1").unwrap()).unwrap();
        let sealed = mk.seal(b"private", owner("t", "kid")).unwrap();
        assert_eq!(mk.open(&sealed, owner("other", "kid")), Err(EnvelopeError::Decrypt));
        assert_eq!(mk.open(&sealed, owner("t", "kid2")), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn a_wrong_master_key_with_the_same_id_fails_cleanly() {
        let a = MasterKeys::parse(&MasterKeys::generate_spec("k1").unwrap()).unwrap();
        let b = MasterKeys::parse(&MasterKeys::generate_spec("k1").unwrap()).unwrap();
        let sealed = a.seal(b"private", owner("t", "kid")).unwrap();
        assert_eq!(b.open(&sealed, owner("t", "kid")), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn rewrap_moves_to_the_primary_key_and_old_key_can_then_go() {
        let old = MasterKeys::generate_spec("old").unwrap();
        let new = MasterKeys::generate_spec("new").unwrap();
        let sealed = keys(&[&old]).seal(b"private", owner("t", "kid")).unwrap();
        let both = keys(&[&new, &old]);
        let rewrapped = both.rewrap(&sealed, owner("t", "kid")).unwrap().unwrap();
        assert_eq!(rewrapped.kek_id, "new");
        assert_eq!(both.rewrap(&rewrapped, owner("t", "kid")).unwrap(), None, "idempotent");
        assert_eq!(keys(&[&new]).open(&rewrapped, owner("t", "kid")).unwrap().as_slice(), b"private");
    }

    #[test]
    fn parse_errors_name_the_entry_but_never_the_material() {
        assert_eq!(MasterKeys::parse("").unwrap_err(), MasterKeyError::Empty);
        assert_eq!(MasterKeys::parse("nocolon").unwrap_err(), MasterKeyError::Shape(1));
        assert_eq!(MasterKeys::parse("bad id:AAAA").unwrap_err(), MasterKeyError::Id("bad id".into()));
        let err = MasterKeys::parse("k:c2hvcnQ=").unwrap_err();
        assert_eq!(err, MasterKeyError::Material("k".into()));
        assert!(!err.to_string().contains("c2hvcnQ"));
        let one = MasterKeys::generate_spec("k").unwrap();
        assert_eq!(
            MasterKeys::parse(&format!("{},{}", *one, *one)).unwrap_err(),
            MasterKeyError::Duplicate("k".into())
        );
        assert!(!format!("{:?}", keys(&[&one])).contains(one.split_once(':').unwrap().1));
    }
}
