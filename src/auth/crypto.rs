//! Signature checks for JWTs on `ring`, which rustls already brings in: jsonwebtoken's
//! RustCrypto backend takes about 330 µs per RS256 or ES256 verification on this class of
//! machine (big-integer key set-up on every call), ring a few tens. jsonwebtoken keeps doing
//! everything else (header, claims, validation); only its verifier factory is replaced.
//! Signing (tests, benchmarks) and symmetric algorithms (refused by the config anyway) stay
//! on RustCrypto.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: RUST_CRYPTO.signer_factory,
    verifier_factory: new_verifier,
    jwk_utils: jsonwebtoken::crypto::JwkUtils {
        extract_rsa_public_key_components: RUST_CRYPTO.jwk_utils.extract_rsa_public_key_components,
        extract_ec_public_key_coordinates: RUST_CRYPTO.jwk_utils.extract_ec_public_key_coordinates,
        compute_digest: RUST_CRYPTO.jwk_utils.compute_digest,
    },
};

/// Makes ring the verifier for this process, before any token is decoded (`Verifier::new`
/// calls it).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if PROVIDER.install_default().is_err() {
            tracing::warn!("a JWT crypto provider was installed already; keeping it");
        }
    });
}

enum Check {
    Rsa(&'static RsaParameters),
    Other(&'static dyn signature::VerificationAlgorithm),
}

struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
    key: DecodingKeyKind,
}

fn new_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    use Algorithm::*;
    let check = match algorithm {
        RS256 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        RS384 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        RS512 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        PS256 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        PS384 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        PS512 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        ES256 => Check::Other(&signature::ECDSA_P256_SHA256_FIXED),
        ES384 => Check::Other(&signature::ECDSA_P384_SHA384_FIXED),
        EdDSA => Check::Other(&signature::ED25519),
        HS256 | HS384 | HS512 => return (RUST_CRYPTO.verifier_factory)(algorithm, key),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        check,
        key: key.kind().clone(),
    }))
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        let verified = match (&self.check, &self.key) {
            // DER (RSA PKCS#1), an uncompressed point (EC) or the raw key (Ed25519).
            (Check::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(*params, der).verify(msg, sig)
            }
            (Check::Other(alg), DecodingKeyKind::SecretOrDer(bytes)) => {
                UnparsedPublicKey::new(*alg, bytes).verify(msg, sig)
            }
            // RSA from a JWK's `n` and `e`.
            (Check::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(params, msg, sig)
            }
            (Check::Other(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(jsonwebtoken::signature::Error::new())
            }
        };
        verified.map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::EncodingKey;

    fn signed(alg: Algorithm, key: &EncodingKey, msg: &[u8]) -> Vec<u8> {
        let b64 = jsonwebtoken::crypto::sign(msg, key, alg).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn ring_verifies_what_rustcrypto_signs_and_nothing_else() {
        let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ";
        for (alg, rcgen_alg) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let private = pair.serialize_pem();
            let encoding = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()),
                _ => EncodingKey::from_ed_pem(private.as_bytes()),
            }
            .unwrap();
            let public = match alg {
                Algorithm::ES256 => DecodingKey::from_ec_der(pair.public_key_raw()),
                _ => DecodingKey::from_ed_der(pair.public_key_raw()),
            };
            let verifier = new_verifier(&alg, &public).unwrap();
            assert_eq!(verifier.algorithm(), alg);
            let mut sig = signed(alg, &encoding, msg);
            assert!(
                verifier.verify(msg, &sig).is_ok(),
                "{alg:?}: good signature"
            );
            assert!(verifier.verify(b"other message", &sig).is_err(), "{alg:?}");
            sig[5] ^= 1;
            assert!(verifier.verify(msg, &sig).is_err(), "{alg:?}: tampered");
            // Another key of the same kind does not verify it either.
            let other = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let other_public = match alg {
                Algorithm::ES256 => DecodingKey::from_ec_der(other.public_key_raw()),
                _ => DecodingKey::from_ed_der(other.public_key_raw()),
            };
            sig[5] ^= 1;
            let wrong = new_verifier(&alg, &other_public).unwrap();
            assert!(wrong.verify(msg, &sig).is_err(), "{alg:?}: foreign key");
        }
    }

    #[test]
    fn an_rsa_algorithm_with_an_ec_key_fails_instead_of_panicking() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = DecodingKey::from_ec_der(pair.public_key_raw());
        let verifier = new_verifier(&Algorithm::RS256, &key).unwrap();
        assert!(verifier.verify(b"m", &vec![0u8; 256]).is_err());
        let jwk_rsa = DecodingKey::from_rsa_raw_components(&[0xc3; 256], &[1, 0, 1]);
        let verifier = new_verifier(&Algorithm::ES256, &jwk_rsa).unwrap();
        assert!(verifier.verify(b"m", &vec![0u8; 64]).is_err());
    }
}
