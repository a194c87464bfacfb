//! Signed policy modules: a detached signature beside each module
//! (`denbi.wasm.sig` for `denbi.wasm`) in OpenSSH's own signature format
//! (SSHSIG, namespace `os-credits-policy`), made with an Ed25519 key.
//!
//! OpenSSH's tools make and check the same files, so an operator can use
//! the keys they already have:
//! `ssh-keygen -Y sign -n os-credits-policy -f KEY denbi.wasm` writes
//! `denbi.wasm.sig`, and `ssh-keygen -Y check-novalidate -n
//! os-credits-policy -s denbi.wasm.sig < denbi.wasm` checks it. The
//! embedded WebAssembly signature format (`wasmsign2`) was not used: its
//! author calls its support for components untested, and policies are
//! components.
//!
//! With trusted keys configured (`OS_CREDITS_POLICY_TRUSTED_KEYS`: public
//! keys, one per line, as in `authorized_keys`), a module loads only with a
//! signature by one of them over its exact bytes.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of policy signatures: a signature made for
/// anything else (a git commit, a file) never passes for a policy.
pub const NAMESPACE: &str = "os-credits-policy";

/// Where the signature of `module` is: the module's path with `.sig` added.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut path = module.as_os_str().to_owned();
    path.push(".sig");
    PathBuf::from(path)
}

/// Why a key, a signature or a module's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A line of the trusted keys is no public key.
    #[error("line {line}: not an OpenSSH public key: {error}")]
    PublicKey {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        error: ssh_key::Error,
    },
    /// A trusted key is not Ed25519.
    #[error(
        "line {line}: a {algorithm} key; policy signatures are Ed25519 (ssh-keygen -t ed25519)"
    )]
    PublicNotEd25519 {
        /// Its number, from 1.
        line: usize,
        /// Its algorithm.
        algorithm: Algorithm,
    },
    /// The trusted keys hold none.
    #[error("no public key in it")]
    NoKey,
    /// The trusted keys' file cannot be read.
    #[error("cannot read trusted keys {}: {error}", path.display())]
    ReadKeys {
        /// The file.
        path: PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// The trusted keys' file holds a bad line.
    #[error("trusted keys {}: {error}", path.display())]
    Keys {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<SignatureError>,
    },
    /// The signature is not SSHSIG text.
    #[error("not an SSH signature: {0}")]
    NotSignature(ssh_key::Error),
    /// The signature was made for something else.
    #[error("signed for {0:?}, not for {NAMESPACE:?}")]
    Namespace(String),
    /// The signer is not trusted (its fingerprint).
    #[error("signed by {0}, which is not a trusted key")]
    Untrusted(String),
    /// The signature is over other bytes.
    #[error("the signature does not match the module's bytes")]
    Mismatch,
    /// The module has no signature file beside it (its name).
    #[error("unsigned: no {0} (trusted keys are required)")]
    Unsigned(String),
    /// The signature file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    ReadSignature {
        /// The file.
        path: PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// No key could be made or written.
    #[error("cannot make a key: {0}")]
    Keygen(ssh_key::Error),
    /// The signing key is not an OpenSSH private key.
    #[error("not an OpenSSH private key: {0}")]
    PrivateKey(ssh_key::Error),
    /// The signing key is encrypted.
    #[error(
        "the key is encrypted: sign with `ssh-keygen -Y sign -n {NAMESPACE} -f KEY MODULE`, or use an unencrypted copy"
    )]
    Encrypted,
    /// The signing key is not Ed25519.
    #[error(
        "a {0} key; policy signatures are Ed25519 (os-credits policy keygen, or ssh-keygen -t ed25519)"
    )]
    PrivateNotEd25519(Algorithm),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(ssh_key::Error),
}

/// The public keys whose signatures are trusted.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// Reads keys, one per line (`ssh-ed25519 AAAA… comment`); blank lines
    /// and `#` comments are skipped. Only Ed25519 keys are accepted.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|error| SignatureError::PublicKey {
                line: number + 1,
                error,
            })?;
            if key.algorithm() != Algorithm::Ed25519 {
                return Err(SignatureError::PublicNotEd25519 {
                    line: number + 1,
                    algorithm: key.algorithm(),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SignatureError::NoKey);
        }
        Ok(TrustedKeys { keys })
    }

    /// Reads the file at `path` (see [`TrustedKeys::parse`]).
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|error| SignatureError::ReadKeys {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text).map_err(|e| SignatureError::Keys {
            path: path.to_owned(),
            error: Box::new(e),
        })
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` (SSHSIG text) over `module`: made in this
    /// namespace by a trusted key. Returns the signer's fingerprint and
    /// comment, or why not.
    pub fn verify(&self, module: &[u8], signature: &str) -> Result<String, SignatureError> {
        let signature = SshSig::from_pem(signature).map_err(SignatureError::NotSignature)?;
        if signature.namespace() != NAMESPACE {
            return Err(SignatureError::Namespace(signature.namespace().to_owned()));
        }
        let Some(key) = self
            .keys
            .iter()
            .find(|key| key.key_data() == signature.public_key())
        else {
            let signer = PublicKey::from(signature.public_key().clone());
            return Err(SignatureError::Untrusted(
                signer.fingerprint(HashAlg::Sha256).to_string(),
            ));
        };
        key.verify(NAMESPACE, module, &signature)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(describe(key))
    }

    /// Checks the signature file beside `module` (whose bytes are `bytes`).
    pub fn verify_file(&self, module: &Path, bytes: &[u8]) -> Result<String, SignatureError> {
        let path = signature_path(module);
        let text = std::fs::read_to_string(&path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => SignatureError::Unsigned(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => SignatureError::ReadSignature {
                path: path.clone(),
                error,
            },
        })?;
        self.verify(bytes, &text)
    }
}

/// A key as people recognise it: its SHA-256 fingerprint and comment.
fn describe(key: &PublicKey) -> String {
    match key.comment() {
        "" => key.fingerprint(HashAlg::Sha256).to_string(),
        comment => format!("{} ({comment})", key.fingerprint(HashAlg::Sha256)),
    }
}

/// A new Ed25519 key pair: the private key in OpenSSH's format and the
/// public key's line, both carrying `comment`.
pub fn keygen(comment: &str) -> Result<(String, String), SignatureError> {
    let mut key = PrivateKey::random(&mut rand_core_os(), Algorithm::Ed25519)
        .map_err(SignatureError::Keygen)?;
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(SignatureError::Keygen)?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .map_err(SignatureError::Keygen)?;
    Ok((private, public))
}

/// The operating system's random numbers.
fn rand_core_os() -> ssh_key::rand_core::OsRng {
    ssh_key::rand_core::OsRng
}

/// Signs `module` with the OpenSSH private key `key` (its text): the
/// SSHSIG text to write beside the module. An encrypted key is refused
/// with the way around it.
pub fn sign(module: &[u8], key: &str) -> Result<String, SignatureError> {
    let key = PrivateKey::from_openssh(key).map_err(SignatureError::PrivateKey)?;
    if key.is_encrypted() {
        return Err(SignatureError::Encrypted);
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(SignatureError::PrivateNotEd25519(key.algorithm()));
    }
    let signature = key
        .sign(NAMESPACE, HashAlg::Sha512, module)
        .map_err(SignatureError::Sign)?;
    signature
        .to_pem(LineEnding::LF)
        .map_err(SignatureError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_passes_only_for_its_bytes_its_namespace_and_a_trusted_key() {
        let (private, public) = keygen("author@example").unwrap();
        let (other_private, other_public) = keygen("someone else").unwrap();
        let trusted = TrustedKeys::parse(&format!("# the author\n\n{public}\n")).unwrap();
        assert_eq!(trusted.len(), 1);
        let module = b"\0asm module bytes";
        let signature = sign(module, &private).unwrap();
        assert!(signature.starts_with("-----BEGIN SSH SIGNATURE-----"));
        let signer = trusted.verify(module, &signature).unwrap();
        assert!(signer.starts_with("SHA256:") && signer.ends_with("(author@example)"));
        // Other bytes.
        let tampered = trusted.verify(b"\0asm module bytes!", &signature);
        let tampered = tampered.unwrap_err();
        assert!(matches!(tampered, SignatureError::Mismatch), "{tampered}");
        assert_eq!(
            tampered.to_string(),
            "the signature does not match the module's bytes"
        );
        // Another key.
        let stranger = trusted.verify(module, &sign(module, &other_private).unwrap());
        let stranger = stranger.unwrap_err();
        assert!(
            matches!(&stranger, SignatureError::Untrusted(_))
                && stranger.to_string().contains("which is not a trusted key"),
            "{other_public}"
        );
        // Not a signature at all.
        assert!(trusted.verify(module, "hello").is_err());
    }

    #[test]
    fn trusted_keys_are_ed25519_public_keys() {
        assert!(matches!(TrustedKeys::parse(""), Err(SignatureError::NoKey)));
        let bad = TrustedKeys::parse("ssh-ed25519 not-base64").unwrap_err();
        assert!(
            matches!(bad, SignatureError::PublicKey { line: 1, .. }),
            "{bad}"
        );
        assert!(bad.to_string().starts_with("line 1: "), "{bad}");
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x";
        assert!(TrustedKeys::parse(rsa).is_err());
    }

    #[test]
    fn the_signature_sits_beside_the_module() {
        assert_eq!(
            signature_path(Path::new("/p/denbi.wasm")),
            PathBuf::from("/p/denbi.wasm.sig")
        );
    }
}
