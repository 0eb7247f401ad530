//! App secrets at rest. The daemon holds one [`SecretsKey`], read from a 0600 file (created at
//! first start, or kept elsewhere and named by path); every value is sealed with
//! XChaCha20-Poly1305 under a subkey of it, with the app and the secret's name as associated
//! data, so a sealed value moved to another row (or app) fails to open instead of leaking
//! there. The store only ever sees sealed bytes and a keyed digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// First byte of every sealed value: the format, so a later one can be told apart.
const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets key file {0} is not a key: expected 64 hex characters (32 bytes)")]
    BadKeyFile(PathBuf),
    #[error("secrets key file {0} must not be readable by group or others (chmod 600 it)")]
    KeyFileMode(PathBuf),
    /// A sealed value did not open: another key, another row, or corrupted bytes.
    #[error("secret {name:?} of app {app:?} cannot be decrypted with this key")]
    Open { app: String, name: String },
}

/// The daemon's secrets key. Its bytes are wiped when it is dropped.
pub struct SecretsKey {
    seal: Zeroizing<[u8; KEY_LEN]>,
    digest: Zeroizing<[u8; KEY_LEN]>,
    cluster: Zeroizing<[u8; KEY_LEN]>,
    cluster_ca: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey").field("id", &self.id).finish()
    }
}

impl SecretsKey {
    fn from_bytes(master: &[u8; KEY_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"hangar secrets v1"), master);
        let mut seal = Zeroizing::new([0u8; KEY_LEN]);
        let mut digest = Zeroizing::new([0u8; KEY_LEN]);
        let mut cluster = Zeroizing::new([0u8; KEY_LEN]);
        let mut cluster_ca = Zeroizing::new([0u8; KEY_LEN]);
        let mut id = [0u8; 8];
        // Expanding 32 (or 8) bytes from SHA-256 cannot fail (the limit is 255 blocks).
        let _ = hk.expand(b"seal", seal.as_mut());
        let _ = hk.expand(b"digest", digest.as_mut());
        let _ = hk.expand(b"cluster api", cluster.as_mut());
        let _ = hk.expand(b"cluster ca", cluster_ca.as_mut());
        let _ = hk.expand(b"key id", &mut id);
        SecretsKey {
            seal,
            digest,
            cluster,
            cluster_ca,
            id: hex::encode(id),
        }
    }

    /// A short public name of the key (derived one-way): the store records it, so a daemon
    /// started with another key refuses to start rather than failing on every secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token hosts of one cluster present to each other's APIs when they forward a
    /// request to the host that owns a machine. Every host of a cluster holds the same key
    /// (the store refuses another), so they agree on it without sharing anything more.
    pub fn cluster_token(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.cluster.as_ref()))
    }

    /// The seed of the cluster's certificate authority (an Ed25519 key): every host derives the
    /// same CA from it, signs its own API certificate with it, and trusts only it when it
    /// calls another host.
    pub fn cluster_ca_seed(&self) -> &[u8; KEY_LEN] {
        &self.cluster_ca
    }

    /// Reads the key at `path`: 64 hex characters (whitespace around them ignored), in a file
    /// no one but its owner can read.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| SecretsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretsError::KeyFileMode(path.to_path_buf()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim(), master.as_mut())
            .map_err(|_| SecretsError::BadKeyFile(path.to_path_buf()))?;
        Ok(Self::from_bytes(&master))
    }

    /// Creates a new random key at `path` (mode 0600, never overwriting a file) and returns it.
    pub fn create(path: &Path) -> Result<Self, SecretsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| SecretsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let master = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            // A link planted at the key's path must not redirect where the key is written.
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(master.as_ref())));
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Self::from_bytes(&master))
    }

    /// Seals `value` for the secret `name` of `app`: format byte, random nonce, ciphertext.
    pub fn seal(&self, app: &str, name: &str, value: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.seal.as_ref().into());
        let nonce_bytes = rand::random::<[u8; NONCE_LEN]>();
        let aad = associated_data(app, name);
        // Encryption only fails for inputs beyond 256 GiB; values are capped far below.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce_bytes),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`seal`](Self::seal) made for the same app and name.
    pub fn open(
        &self,
        app: &str,
        name: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let err = || SecretsError::Open {
            app: app.to_string(),
            name: name.to_string(),
        };
        let (format, rest) = sealed.split_first().ok_or_else(err)?;
        if *format != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.seal.as_ref().into());
        let aad = associated_data(app, name);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| err())
    }

    /// The digest `list` shows: 16 hex characters of an HMAC of the value under a subkey, so
    /// equal values show equal digests here, and a leaked digest cannot be checked against
    /// guesses without the key.
    pub fn digest(&self, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.digest.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(value);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

fn associated_data(app: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + app.len() + name.len());
    aad.extend_from_slice(b"hangar-secret\0");
    aad.extend_from_slice(app.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Where the key file lives when not given: beside the store.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, SecretsKey) {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretsKey::create(&dir.path().join("k")).unwrap();
        (dir, k)
    }

    #[test]
    fn sealed_values_open_only_for_their_app_and_name() {
        let (_d, k) = key();
        let sealed = k.seal("app", "DB_URL", b"postgres://u:p@h/db");
        assert!(
            !sealed.windows(8).any(|w| w == b"postgres"),
            "sealed bytes contain the plaintext"
        );
        assert_eq!(
            k.open("app", "DB_URL", &sealed).unwrap().as_slice(),
            b"postgres://u:p@h/db"
        );
        assert!(k.open("app", "OTHER", &sealed).is_err());
        assert!(k.open("other", "DB_URL", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open("app", "DB_URL", &flipped).is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, k.seal("app", "DB_URL", b"postgres://u:p@h/db"));
    }

    #[test]
    fn a_key_file_reloads_to_the_same_key_and_another_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k1 = SecretsKey::create(&path).unwrap();
        let sealed = k1.seal("a", "N", b"v");
        let k2 = SecretsKey::load(&path).unwrap();
        assert_eq!(k1.id(), k2.id());
        assert_eq!(k1.digest(b"v"), k2.digest(b"v"));
        assert_eq!(k2.open("a", "N", &sealed).unwrap().as_slice(), b"v");
        let other = SecretsKey::create(&dir.path().join("k2")).unwrap();
        assert_ne!(other.id(), k1.id());
        assert!(other.open("a", "N", &sealed).is_err());
        // Never overwritten.
        assert!(SecretsKey::create(&path).is_err());
    }

    #[test]
    fn key_files_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        SecretsKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretsKey::load(&path),
            Err(SecretsError::KeyFileMode(_))
        ));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not hex").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretsKey::load(&bad),
            Err(SecretsError::BadKeyFile(_))
        ));
    }
}
