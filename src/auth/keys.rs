//! The key a JWT is verified with: the HS* secret, or a PEM public key file, checked
//! by hand (PEM, DER, RSA modulus and exponent) so that a bad key fails at start-up,
//! naming the config key, rather than on every connection.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwt::alg_name;
use super::JwtAlgorithm;
use super::{AuthError, Settings};

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash (32 bytes for HS256), and anything shorter is within reach of offline guessing
/// from a single token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Loads the key named by config: the secret for HS*, the public key file
/// for the others.
pub(super) fn decoding_key(s: &Settings) -> Result<DecodingKey, AuthError> {
    let name = alg_name(s.algorithm);
    match s.algorithm {
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
            let secret = s.secret.as_deref().unwrap_or_default();
            if secret.is_empty() {
                return Err(AuthError::Config(format!(
                    "jwt_secret is required when jwt_algorithm = {name}"
                )));
            }
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(AuthError::Config(format!(
                    "jwt_secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
                    secret.len()
                )));
            }
            Ok(DecodingKey::from_secret(secret.as_bytes()))
        }
        JwtAlgorithm::RS256 | JwtAlgorithm::ES256 | JwtAlgorithm::EdDSA => {
            let path = s.public_key_file.as_deref().ok_or_else(|| {
                AuthError::Config(format!(
                    "jwt_public_key_file is required when jwt_algorithm = {name}"
                ))
            })?;
            load_public_key(path, s.algorithm)
        }
    }
}

fn load_public_key(path: &Path, alg: JwtAlgorithm) -> Result<DecodingKey, AuthError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        AuthError::Config(format!("jwt_public_key_file = {shown}: cannot read: {e}"))
    })?;
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
    {
        return Err(AuthError::Config(format!(
            "jwt_public_key_file = {shown}: holds a private key; give tether only the public key"
        )));
    }
    let (parsed, kind) = match alg {
        JwtAlgorithm::RS256 => (DecodingKey::from_rsa_pem(&pem), "RSA"),
        JwtAlgorithm::ES256 => (DecodingKey::from_ec_pem(&pem), "P-256 EC"),
        JwtAlgorithm::EdDSA => (DecodingKey::from_ed_pem(&pem), "Ed25519"),
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
            unreachable!("HS* algorithms use jwt_secret")
        }
    };
    let key = parsed.map_err(|_| {
        AuthError::Config(format!(
            "jwt_public_key_file = {shown}: not a PEM {kind} public key (jwt_algorithm = {})",
            alg_name(alg)
        ))
    })?;
    if alg == JwtAlgorithm::RS256 {
        check_rsa_public_key(key.as_bytes())
            .map_err(|why| AuthError::Config(format!("jwt_public_key_file = {shown}: {why}")))?;
    }
    Ok(key)
}

/// Verifies a dummy token once at start-up so that an unusable key fails
/// here, naming the config key, instead of on every connection. The EC and
/// Ed verifiers parse the key before looking at the signature, so a key
/// error here means the key is bad. (The RSA verifier reports a bad key as
/// a bad signature; [`check_rsa_public_key`] covers it instead.)
pub(super) fn probe_key(
    alg: JwtAlgorithm,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<(), AuthError> {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}"}}"#, alg_name(alg)));
    let token = format!("{header}.e30.AAAA");
    match jsonwebtoken::decode::<Map<String, Value>>(&token, key, validation) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
            ) =>
        {
            Err(AuthError::Config(format!(
                "jwt_public_key_file: the key cannot verify {} tokens",
                alg_name(alg)
            )))
        }
        _ => Ok(()),
    }
}

/// Reads one DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, tail) = rest.split_at(count);
        rest = tail;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Checks a PKCS#1 `RSAPublicKey { n, e }` the way the RSA verifier will
/// (it refuses moduli over 4096 bits, even `n`, even or tiny `e`), plus the
/// RFC 7518 minimum of 2048 bits.
fn check_rsa_public_key(der: &[u8]) -> Result<(), String> {
    const NOT_RSA: &str = "not an RSA public key";
    let (tag, body, rest) = der_element(der).ok_or(NOT_RSA)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(NOT_RSA.to_owned());
    }
    let (n_tag, n, rest) = der_element(body).ok_or(NOT_RSA)?;
    let (e_tag, e, rest) = der_element(rest).ok_or(NOT_RSA)?;
    if n_tag != 0x02 || e_tag != 0x02 || !rest.is_empty() {
        return Err(NOT_RSA.to_owned());
    }
    let strip = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|b| *b == 0).collect() };
    let (n, e) = (strip(n), strip(e));
    let bits = match n.first() {
        Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if bits < 2048 {
        return Err(format!(
            "RSA key is {bits} bits; at least 2048 are required"
        ));
    }
    if bits > 4096 {
        return Err(format!(
            "RSA key is {bits} bits; at most 4096 are supported"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".to_owned());
    }
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        u64::MAX
    };
    if !(3..(1 << 33)).contains(&exponent) || exponent & 1 == 0 {
        return Err("RSA public exponent is out of range".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::{config_error, hs_settings, now};
    use crate::auth::{jwt::to_jwt_algorithm, Authenticator};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use std::path::PathBuf;

    #[test]
    fn rsa_modulus_checks() {
        assert!(check_rsa_public_key(b"").is_err());
        assert!(check_rsa_public_key(&[0x30, 0x00]).is_err());
        // SEQUENCE { INTEGER 0x00ff.. (1024 bits), INTEGER 65537 }.
        let mut n = vec![0x00];
        n.extend(std::iter::repeat_n(0xff, 128));
        let mut body = vec![0x02, 0x81, n.len() as u8];
        body.extend(&n);
        body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30, 0x81, body.len() as u8];
        der.extend(&body);
        let err = check_rsa_public_key(&der).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }

    /// Asymmetric keys come from the `openssl` CLI, so these tests exercise
    /// real PEM files as an operator would write them.
    mod asymmetric {
        use super::*;
        use std::process::Command;

        fn openssl_available() -> bool {
            let found = Command::new("openssl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                eprintln!("note: openssl CLI not found; skipping asymmetric JWT tests");
            }
            found
        }

        /// Generates a key pair; returns (private PEM bytes, public PEM path).
        fn keypair(dir: &Path, stem: &str, genpkey_args: &[&str]) -> (Vec<u8>, PathBuf) {
            let private = dir.join(format!("{stem}.key.pem"));
            let public = dir.join(format!("{stem}.pub.pem"));
            // `output()` rather than `status()`: genpkey prints progress dots.
            let run = |cmd: &mut Command| {
                let out = cmd.output().expect("run openssl");
                assert!(
                    out.status.success(),
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(Command::new("openssl")
                .arg("genpkey")
                .args(genpkey_args)
                .arg("-out")
                .arg(&private));
            run(Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public));
            (std::fs::read(&private).unwrap(), public)
        }

        fn rsa_args(bits: &'static str) -> Vec<&'static str> {
            vec!["-algorithm", "RSA", "-pkeyopt", bits]
        }

        const EC_P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        const EC_P384: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
        const ED25519: &[&str] = &["-algorithm", "ED25519"];

        fn settings(alg: JwtAlgorithm, public: &Path) -> Settings {
            Settings {
                secret: None,
                algorithm: alg,
                public_key_file: Some(public.to_owned()),
                ..hs_settings()
            }
        }

        fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
            jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
        }

        /// Round trip, wrong key, and the HMAC-with-public-key confusion.
        fn exercise(alg: JwtAlgorithm, private: &[u8], other_private: &[u8], public: &Path) {
            let jwt_alg = to_jwt_algorithm(alg);
            let encoding = |pem: &[u8]| {
                match alg {
                    JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                    JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
                    JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                    _ => unreachable!(),
                }
                .expect("private key PEM")
            };
            let auth = Authenticator::from_settings(settings(alg, public)).expect("authenticator");
            let claims = json!({"sub": "u-42", "exp": now() + 600, "org": "acme"});

            let token = sign_with(jwt_alg, &encoding(private), &claims);
            let v = auth.verify(&token).expect("token signed with matching key");
            assert_eq!(v.user.id, "u-42");
            assert_eq!(v.user.claims.get("org"), Some(&json!("acme")));

            let forged = sign_with(jwt_alg, &encoding(other_private), &claims);
            assert_eq!(
                auth.verify(&forged).unwrap_err(),
                AuthError::BadSignature,
                "{alg:?}"
            );

            let expired = sign_with(
                jwt_alg,
                &encoding(private),
                &json!({"sub": "u", "exp": now() - 600}),
            );
            assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);

            // Key confusion: HMAC keyed with the public key the server holds.
            let public_pem = std::fs::read(public).unwrap();
            for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let confused = sign_with(hs, &EncodingKey::from_secret(&public_pem), &claims);
                assert_eq!(
                    auth.verify(&confused).unwrap_err(),
                    AuthError::WrongAlgorithm,
                    "{hs:?} token against {alg:?}"
                );
            }
        }

        #[test]
        fn rs256() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", &rsa_args("rsa_keygen_bits:2048"));
            let (other, _) = keypair(dir.path(), "b", &rsa_args("rsa_keygen_bits:2048"));
            exercise(JwtAlgorithm::RS256, &private, &other, &public);

            // Operator mistakes fail at start-up, naming the key.
            let (_, small) = keypair(dir.path(), "small", &rsa_args("rsa_keygen_bits:1024"));
            let msg = config_error(settings(JwtAlgorithm::RS256, &small));
            assert!(
                msg.contains("jwt_public_key_file") && msg.contains("1024"),
                "{msg}"
            );
            let msg = config_error(settings(JwtAlgorithm::RS256, &dir.path().join("a.key.pem")));
            assert!(msg.contains("private key"), "{msg}");
            let (_, ec_public) = keypair(dir.path(), "ec", EC_P256);
            let msg = config_error(settings(JwtAlgorithm::RS256, &ec_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
            let garbage = dir.path().join("garbage.pem");
            std::fs::write(&garbage, "hello").unwrap();
            let msg = config_error(settings(JwtAlgorithm::RS256, &garbage));
            assert!(msg.contains("garbage.pem"), "{msg}");
        }

        #[test]
        fn es256() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", EC_P256);
            let (other, _) = keypair(dir.path(), "b", EC_P256);
            exercise(JwtAlgorithm::ES256, &private, &other, &public);

            // A P-384 key parses as "EC" but cannot verify ES256.
            let (_, p384) = keypair(dir.path(), "p384", EC_P384);
            let msg = config_error(settings(JwtAlgorithm::ES256, &p384));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
            let (_, rsa_public) = keypair(dir.path(), "rsa", &rsa_args("rsa_keygen_bits:2048"));
            let msg = config_error(settings(JwtAlgorithm::ES256, &rsa_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
        }

        #[test]
        fn eddsa() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", ED25519);
            let (other, _) = keypair(dir.path(), "b", ED25519);
            exercise(JwtAlgorithm::EdDSA, &private, &other, &public);

            let (_, ec_public) = keypair(dir.path(), "ec", EC_P256);
            let msg = config_error(settings(JwtAlgorithm::EdDSA, &ec_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
        }

        #[test]
        fn asymmetric_config_rejects_other_asymmetric_algorithms() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (_, rsa_public) = keypair(dir.path(), "rsa", &rsa_args("rsa_keygen_bits:2048"));
            let (ec_private, _) = keypair(dir.path(), "ec", EC_P256);
            let auth =
                Authenticator::from_settings(settings(JwtAlgorithm::RS256, &rsa_public)).unwrap();
            let token = sign_with(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&ec_private).unwrap(),
                &json!({"sub": "u", "exp": now() + 600}),
            );
            assert_eq!(auth.verify(&token).unwrap_err(), AuthError::WrongAlgorithm);
        }
    }
}
