//! The app's identity and its secret key, shared by `run`, `simulate` and
//! `usersig`, from flags with environment fallbacks. The secret is never
//! printed: clap is told to hide its environment value, and [`SecretKey`]
//! redacts itself.

use std::path::{Path, PathBuf};

use crate::tencent::usersig::SecretKey;

/// Why the secret key cannot be had, said so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the app's secret key is missing: set TIM_SECRET_KEY or TIM_SECRET_KEY_FILE (or --secret-key-file)")]
    Missing,
    #[error("give the secret key once: TIM_SECRET_KEY and TIM_SECRET_KEY_FILE are both set")]
    Twice,
    #[error("cannot read the secret key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret key {0} is empty")]
    Empty(String),
}

/// Where the app's secret key comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
    /// The app's secret key. Prefer the file: a flag shows in the process list.
    #[arg(long, env = "TIM_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// A file holding the app's secret key (trailing newline ignored).
    #[arg(long, env = "TIM_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretArgs {
    pub fn load(&self) -> Result<SecretKey, SecretError> {
        match (&self.secret_key, &self.secret_key_file) {
            (Some(_), Some(_)) => Err(SecretError::Twice),
            (None, None) => Err(SecretError::Missing),
            (Some(key), None) if key.trim().is_empty() => {
                Err(SecretError::Empty("in TIM_SECRET_KEY".into()))
            }
            (Some(key), None) => Ok(SecretKey::new(key.trim())),
            (None, Some(path)) => read_secret_file(path),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<SecretKey, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    warn_if_world_readable(path);
    let key = text.trim();
    if key.is_empty() {
        return Err(SecretError::Empty(format!("in {}", path.display())));
    }
    Ok(SecretKey::new(key))
}

#[cfg(unix)]
fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the secret key file is readable by every user; restrict it (chmod 600)"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_path: &Path) {}

/// The app whose broadcasts are sent. Required, except where an apps file
/// names the apps instead.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// The app's SDKAppID.
    #[arg(long, env = "TIM_SDKAPPID")]
    pub sdkappid: Option<u64>,
    /// The app admin account the UserSig is signed for.
    #[arg(long, env = "TIM_IDENTIFIER")]
    pub identifier: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
}

impl AppArgs {
    pub fn sdkappid(&self) -> anyhow::Result<u64> {
        self.sdkappid.ok_or_else(|| {
            anyhow::anyhow!("the app's SDKAppID is missing: set TIM_SDKAPPID (or --sdkappid)")
        })
    }

    pub fn identifier(&self) -> anyhow::Result<String> {
        match self.identifier.as_deref().map(str::trim) {
            None => anyhow::bail!(
                "the app admin account is missing: set TIM_IDENTIFIER (or --identifier)"
            ),
            Some("") => anyhow::bail!("TIM_IDENTIFIER must not be empty"),
            Some(_) => Ok(self.identifier.clone().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: Option<&str>, file: Option<PathBuf>) -> SecretArgs {
        SecretArgs {
            secret_key: key.map(str::to_owned),
            secret_key_file: file,
        }
    }

    #[test]
    fn secret_sources() {
        assert!(matches!(args(None, None).load(), Err(SecretError::Missing)));
        assert!(matches!(
            args(Some("k"), Some("f".into())).load(),
            Err(SecretError::Twice)
        ));
        assert!(matches!(
            args(Some(" "), None).load(),
            Err(SecretError::Empty(_))
        ));
        let dir = std::env::temp_dir().join(format!("bw-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let key = args(None, Some(dir.clone())).load().unwrap();
        assert!(!format!("{key:?}").contains("s3cret"));
        std::fs::remove_file(&dir).unwrap();
        let err = args(None, Some(dir)).load().unwrap_err();
        assert!(err.to_string().contains("cannot read the secret key file"));
    }
}
