//! The data directory: where a daemon keeps its event log, token, queues and logs.
//!
//! ```text
//! DATA_DIR/
//!   events/        the sled event log (understudy-store)
//!   token          the API bearer token (mode 0600)
//!   queue/         source queues, one folder per job
//!   logs/          verification and orphan logs
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use understudy_core::StoreError;
use understudy_store::SledEventStore;

use crate::UserError;

/// The event log's folder inside a data directory.
pub fn events_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

/// Opens the event log of an existing data directory, for reading or for a daemon.
///
/// # Errors
///
/// A user error when the directory does not exist, is not a data directory, or is locked.
pub fn open_existing(data_dir: &Path) -> Result<SledEventStore> {
    if !data_dir.is_dir() {
        return Err(UserError(format!(
            "no understudy data directory at {}: give the --data-dir a daemon or a simulation used",
            data_dir.display()
        ))
        .into());
    }
    let events = events_dir(data_dir);
    // An empty events/ folder holds no log: opening it would create one (sled creates freely).
    let empty = std::fs::read_dir(&events).is_ok_and(|mut entries| entries.next().is_none());
    if !events.is_dir() || empty {
        return Err(UserError(format!(
            "{} is not an understudy data directory (its events/ folder is missing or empty): give the --data-dir a daemon or a simulation used",
            data_dir.display()
        ))
        .into());
    }
    open(&events)
}

/// Opens (creating if needed) the event log of a data directory.
///
/// # Errors
///
/// A user error when the directory cannot be a data directory or is locked.
pub fn open_or_create(data_dir: &Path) -> Result<SledEventStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    open(&events_dir(data_dir))
}

/// Whether an error from [`open_existing`] means a daemon holds the directory.
pub fn is_locked(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<UserError>()
        .is_some_and(|e| e.0.contains("in use by another understudy process"))
}

fn open(events: &Path) -> Result<SledEventStore> {
    SledEventStore::open(events).map_err(|error| match error {
        StoreError::NotAStore(message) | StoreError::Locked(message) => UserError(message).into(),
        other => anyhow::Error::from(other)
            .context(format!("cannot open the event log in {}", events.display())),
    })
}

/// The API bearer token of a data directory, created (mode 0600) at first start.
///
/// # Errors
///
/// The token file cannot be read or written.
pub fn token(data_dir: &Path) -> Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(token) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private", path.display()))?;
            }
            Ok(token.trim().to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token =
                format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create the API token {}", path.display()))?;
            std::io::Write::write_all(&mut file, token.as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(error) => Err(anyhow::Error::from(error)
            .context(format!("cannot read the API token {}", path.display()))),
    }
}

/// This engine's id (kept in the data directory so it survives restarts).
///
/// # Errors
///
/// The file cannot be read or written.
pub fn engine_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("engine-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(_) => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let id = format!(
                "{}-{}",
                host.trim().replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            std::fs::write(&path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

/// The default data directory: `$UNDERSTUDY_DATA_DIR`, else `/var/lib/understudy` for root,
/// else `~/.local/share/understudy`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UNDERSTUDY_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/lib/understudy");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/understudy"),
        None => PathBuf::from("/var/lib/understudy"),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}
