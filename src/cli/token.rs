//! `hearty token`: a staff member's token.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::auth::{Authenticator, StaffRole, keys};
use crate::config::Secret;

/// The longest a staff token may live.
pub const MAX_STAFF_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// `hearty token`: a staff member's token, signed with the deployment's key
/// (`key`), else with the key of the zero-setup data folder `data_dir` (which
/// must exist: a new key would sign tokens no server accepts).
pub fn staff_token(
    key: Option<&Secret>,
    data_dir: &Path,
    role: StaffRole,
    subject: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    if ttl.is_zero() || ttl > MAX_STAFF_TTL {
        bail!("--ttl must be more than 0 and at most 366 days");
    }
    if subject.trim().is_empty() || subject.len() > 200 {
        bail!("--subject must name the staff member (at most 200 characters)");
    }
    let key = match key {
        Some(k) => keys::checked(k).context("HEARTY_AUTH_KEY")?,
        None => keys::existing_folder_key(data_dir)?.with_context(|| {
            format!(
                "no signing key: set HEARTY_AUTH_KEY (the deployment's) or point --data-dir at the \
                 folder of a zero-setup server ({} has no {})",
                data_dir.display(),
                keys::KEY_FILE
            )
        })?,
    };
    let auth = Authenticator::new(&key, None, None)?;
    let issued = auth.staff_token(role, subject.trim(), ttl)?;
    Ok(issued.token.expose().to_owned())
}
