//! Patient pseudonyms: HMAC-SHA256 of the patient id under a key the registering site keeps.
//!
//! Only the pseudonym leaves the machine. The key never does: the server neither stores nor
//! serves it, so whoever reads the database or the API can compare pseudonyms (which images
//! share a patient) but cannot recompute one from a guessed PatientID, as they could with the
//! unkeyed salted hash that came before (a 5-digit PatientID fell in 0.15 s). A version
//! records the key's id (an HMAC of a fixed label, not the key) so a dataset's later versions
//! can be checked to use the same key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the key file (else [`default_path`]).
pub const KEY_FILE_VAR: &str = "COBB_PSEUDONYM_KEY_FILE";

/// A site's pseudonym key: 32 random bytes, kept as 64 hex digits in a file of mode 0600.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymKey({})", self.id())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no pseudonym key at {path}: patient ids are pseudonymised with a key this site keeps and never sends. \
         Create it once per site with `cobb dataset key init` (back it up with your other secrets), or point \
         {KEY_FILE_VAR} at the key every registration of this site has used"
    )]
    Missing { path: String },
    #[error("{path} is not a pseudonym key (expected 64 hex digits): {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} already exists; a site's key is created once (registering with a new key breaks patient matching across versions)")]
    Exists { path: String },
    #[error("cannot use the pseudonym key at {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl PseudonymKey {
    /// A fresh key from the operating system's random source (two v4 UUIDs: 244 random bits).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self(bytes)
    }

    /// A key from raw bytes (tests and local training).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    /// The pseudonym of a patient id: 128 bits of HMAC-SHA256 as 32 hex digits (the unkeyed
    /// hashes before were 24).
    pub fn pseudonym(&self, patient_id: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"cobb-patient-v2\0");
        mac.update(patient_id.trim().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The key's public id: tells two keys apart without revealing either.
    pub fn id(&self) -> String {
        let mut mac = self.mac();
        mac.update(b"cobb-key-id\0");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyError::Missing { path: shown }),
            Err(source) => return Err(KeyError::Io { path: shown, source }),
        };
        let invalid = |reason: &str| KeyError::Invalid { path: shown.clone(), reason: reason.to_owned() };
        let bytes = hex::decode(text.trim()).map_err(|e| invalid(&e.to_string()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid("it is not 32 bytes long"))?;
        Ok(Self(bytes))
    }

    /// Creates a new key file (mode 0600, its folder 0700 when created); refuses to replace one.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io { path: shown.clone(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            std::fs::create_dir_all(parent).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(KeyError::Exists { path: shown }),
            Err(e) => return Err(io(e)),
        };
        let key = Self::generate();
        writeln!(file, "{}", hex::encode(key.0)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }

    /// The key file at `path`, created first when `create_if_missing` (a single-host install
    /// such as `cobb demo`, whose data dir is the site).
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Missing { .. }) => Self::create(path),
            other => other,
        }
    }
}

/// Where a site's key lives when neither `--key-file` nor [`KEY_FILE_VAR`] says:
/// `$XDG_CONFIG_HOME/cobb/pseudonym.key`, else `~/.config/cobb/pseudonym.key`.
pub fn default_path() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("cobb").join("pseudonym.key")
}

/// The key file to use: `explicit`, else [`KEY_FILE_VAR`], else [`default_path`].
pub fn key_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(KEY_FILE_VAR).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(default_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_need_the_key_and_keys_are_created_once_and_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("site").join("pseudonym.key");
        assert!(matches!(PseudonymKey::load(&path), Err(KeyError::Missing { .. })));
        let key = PseudonymKey::create(&path).expect("create");
        assert!(matches!(PseudonymKey::create(&path), Err(KeyError::Exists { .. })), "never replaced");
        let again = PseudonymKey::load(&path).expect("load");
        assert_eq!(key.pseudonym("12345"), again.pseudonym("12345"));
        assert_eq!(key.pseudonym(" 12345 "), key.pseudonym("12345"), "ids are trimmed");
        assert_eq!(key.pseudonym("12345").len(), 32);
        assert_ne!(key.pseudonym("12345"), key.pseudonym("12346"));
        let other = PseudonymKey::generate();
        assert_ne!(key.pseudonym("12345"), other.pseudonym("12345"), "another key, another pseudonym");
        assert_ne!(key.id(), other.id());
        assert!(!key.id().is_empty() && !key.pseudonym("1").contains(&key.id()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(path.parent().expect("dir")).expect("meta").permissions().mode() & 0o777, 0o700);
        }
        std::fs::write(&path, "not hex\n").expect("write");
        assert!(matches!(PseudonymKey::load(&path), Err(KeyError::Invalid { .. })));
    }
}
