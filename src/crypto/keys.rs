//! Asymmetric signing keys with aws-lc-rs: generation, signing with a parsed (cached) key
//! pair, and verification with a parsed public key.
//!
//! Private keys leave this module only as PKCS#8 bytes inside [`PrivatePkcs8`], which
//! zeroes itself on drop and never prints its contents.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use zeroize::Zeroizing;

use super::jwk::{JwkError, PublicJwk};
use crate::domain::SigningAlg;

/// PKCS#8 DER of a private key. Redacted in `Debug`, zeroed on drop.
pub struct PrivatePkcs8(pub(crate) Zeroizing<Vec<u8>>);

impl fmt::Debug for PrivatePkcs8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivatePkcs8(<redacted>)")
    }
}

impl PrivatePkcs8 {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A freshly generated key: its private half (to be sealed) and public JWK (kid included).
#[derive(Debug)]
pub struct GeneratedKey {
    pub private: PrivatePkcs8,
    pub public: PublicJwk,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored private key could not be parsed as {0} PKCS#8")]
    ParsePrivate(SigningAlg),
    #[error(transparent)]
    Jwk(#[from] JwkError),
    #[error("signing failed")]
    Sign,
}

pub fn generate(alg: SigningAlg) -> Result<GeneratedKey, KeyError> {
    let generated = match alg {
        SigningAlg::Es256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| KeyError::Generate)?;
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
            GeneratedKey {
                private: PrivatePkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())),
                public: PublicJwk::ec_p256(pair.public_key().as_ref())?,
            }
        }
        SigningAlg::EdDsa => {
            let pair = Ed25519KeyPair::generate().map_err(|_| KeyError::Generate)?;
            let pkcs8 = pair.to_pkcs8().map_err(|_| KeyError::Generate)?;
            GeneratedKey {
                private: PrivatePkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())),
                public: PublicJwk::ed25519(pair.public_key().as_ref())?,
            }
        }
        SigningAlg::Rs256 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
            let pkcs8 = pair.as_der().map_err(|_| KeyError::Generate)?;
            let public = pair.public_key();
            GeneratedKey {
                private: PrivatePkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())),
                public: PublicJwk::rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                ),
            }
        }
    };
    Ok(generated)
}

/// A parsed private key, kept in memory so that signing a token costs one signature and
/// no parsing or decryption.
pub struct SigningKey {
    kid: String,
    pair: Pair,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg()).finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_pkcs8(kid: &str, alg: SigningAlg, pkcs8: &PrivatePkcs8) -> Result<SigningKey, KeyError> {
        let der = pkcs8.as_bytes();
        let bad = |_| KeyError::ParsePrivate(alg);
        let pair = match alg {
            SigningAlg::Es256 => {
                Pair::Es256(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(bad)?)
            }
            SigningAlg::EdDsa => Pair::EdDsa(Ed25519KeyPair::from_pkcs8(der).map_err(bad)?),
            SigningAlg::Rs256 => Pair::Rs256(RsaKeyPair::from_pkcs8(der).map_err(bad)?),
        };
        Ok(SigningKey { kid: kid.to_owned(), pair })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> SigningAlg {
        match self.pair {
            Pair::Es256(_) => SigningAlg::Es256,
            Pair::EdDsa(_) => SigningAlg::EdDsa,
            Pair::Rs256(_) => SigningAlg::Rs256,
        }
    }

    /// The JWS signature of `message` (for ES256 the fixed-length `r || s` form JWS uses).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Es256(pair) => {
                Ok(pair.sign(&SystemRandom::new(), message).map_err(|_| KeyError::Sign)?.as_ref().to_vec())
            }
            Pair::EdDsa(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rs256(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig).map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// The public JWK derived from the private key: used at load time to prove that the
    /// decrypted private half belongs to the stored public half.
    pub fn public_jwk(&self) -> Result<PublicJwk, KeyError> {
        Ok(match &self.pair {
            Pair::Es256(pair) => PublicJwk::ec_p256(pair.public_key().as_ref())?,
            Pair::EdDsa(pair) => PublicJwk::ed25519(pair.public_key().as_ref())?,
            Pair::Rs256(pair) => {
                let public = pair.public_key();
                PublicJwk::rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
        })
    }
}

/// A parsed public key: verification costs one signature check.
pub struct VerifyingKey {
    alg: SigningAlg,
    key: ParsedPublicKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl VerifyingKey {
    pub fn from_jwk(jwk: &PublicJwk) -> Result<VerifyingKey, JwkError> {
        let alg = jwk.signing_alg().ok_or(JwkError("unsupported alg"))?;
        let rejected = |_| JwkError("public key rejected");
        let key = match alg {
            SigningAlg::Es256 => {
                let mut point = vec![0x04];
                point.extend(PublicJwk::decode(&jwk.x)?);
                point.extend(PublicJwk::decode(&jwk.y)?);
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).map_err(rejected)?
            }
            SigningAlg::EdDsa => ParsedPublicKey::new(&ED25519, PublicJwk::decode(&jwk.x)?).map_err(rejected)?,
            SigningAlg::Rs256 => {
                let components =
                    RsaPublicKeyComponents { n: PublicJwk::decode(&jwk.n)?, e: PublicJwk::decode(&jwk.e)? };
                components.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256).map_err(rejected)?
            }
        };
        Ok(VerifyingKey { alg, key })
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        self.key.verify_sig(message, sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alg_generates_signs_and_verifies() {
        for alg in SigningAlg::ALL {
            let generated = generate(alg).unwrap();
            assert_eq!(generated.public.alg, alg.as_str());
            assert_eq!(generated.public.kid, generated.public.thumbprint());
            let signer = SigningKey::from_pkcs8(&generated.public.kid, alg, &generated.private).unwrap();
            assert_eq!(signer.public_jwk().unwrap(), generated.public, "{alg}: private and public halves match");
            let sig = signer.sign(b"header.payload").unwrap();
            let verifier = VerifyingKey::from_jwk(&generated.public).unwrap();
            assert!(verifier.verify(b"header.payload", &sig), "{alg}");
            assert!(!verifier.verify(b"header.payload2", &sig), "{alg}: tampered message");
        }
    }

    #[test]
    fn a_private_key_parsed_as_the_wrong_alg_is_an_error() {
        let generated = generate(SigningAlg::EdDsa).unwrap();
        assert!(SigningKey::from_pkcs8("k", SigningAlg::Es256, &generated.private).is_err());
    }

    #[test]
    fn debug_output_never_shows_private_material() {
        let generated = generate(SigningAlg::Es256).unwrap();
        let shown = format!("{generated:?}");
        assert!(shown.contains("redacted"));
        let signer = SigningKey::from_pkcs8("k", SigningAlg::Es256, &generated.private).unwrap();
        assert!(!format!("{signer:?}").contains("pair"));
    }
}
