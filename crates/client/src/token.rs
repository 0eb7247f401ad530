//! The admin token: `HANGAR_API_TOKEN`, else `<data dir>/token` written by the daemon.

use std::path::{Path, PathBuf};

use crate::error::ClientError;

/// Default data dir (duplicates `hangar_daemon::DEFAULT_DATA_DIR`; keep in sync).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hangar";
/// Token file name inside the data dir (duplicates `hangar_daemon::TOKEN_FILE`).
pub const TOKEN_FILE: &str = "token";
pub const API_TOKEN_ENV: &str = "HANGAR_API_TOKEN";
pub const DATA_DIR_ENV: &str = "HANGAR_DATA_DIR";

/// `HANGAR_DATA_DIR`, or `/var/lib/hangar`.
pub fn data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// Path of the token file under [`data_dir`].
pub fn token_path() -> PathBuf {
    data_dir().join(TOKEN_FILE)
}

/// Resolves the token from the environment, falling back to the token file.
pub fn read_token() -> Result<String, ClientError> {
    resolve_token(std::env::var(API_TOKEN_ENV).ok(), &token_path())
}

/// [`read_token`] with its inputs explicit (testable without touching the process env).
pub fn resolve_token(env_token: Option<String>, file: &Path) -> Result<String, ClientError> {
    if let Some(token) = env_token.map(|t| t.trim().to_string()) {
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token_error = |cause| ClientError::Token {
        path: file.to_path_buf(),
        cause,
    };
    let text = std::fs::read_to_string(file).map_err(token_error)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(token_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            resolve_token(Some("from-env".into()), &file).unwrap(),
            "from-env"
        );
        assert_eq!(resolve_token(None, &file).unwrap(), "from-file");
        // An empty variable is treated as unset.
        assert_eq!(resolve_token(Some(" ".into()), &file).unwrap(), "from-file");
    }

    #[test]
    fn missing_or_empty_file_is_a_token_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let err = resolve_token(None, &file).unwrap_err();
        assert!(matches!(err, ClientError::Token { .. }));
        let msg = err.to_string();
        assert!(msg.contains("hangar daemon"), "{msg}");
        assert!(!msg.contains('\n'));
        std::fs::write(&file, "\n").unwrap();
        assert!(resolve_token(None, &file).is_err());
    }
}
