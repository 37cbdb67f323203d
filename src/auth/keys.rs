//! The keys tokens are signed and verified with.
//!
//! - The deployment's own key (`HEARTY_AUTH_KEY`): an HMAC secret of at least
//!   32 characters that signs customers' and staff's tokens. Every process of
//!   a deployment shares it (an owner verifies the token an API replica
//!   forwards). Zero-setup (no broker) generates one into the data folder
//!   (`auth.key`, readable by its owner only) and keeps it across restarts.
//! - An external identity provider's public keys (`HEARTY_AUTH_JWKS`, a JWKS
//!   file or `http://` URL, with `HEARTY_AUTH_ISSUER` and
//!   `HEARTY_AUTH_AUDIENCE`), so Keycloak, Auth0 or any OIDC issuer can
//!   sign the tokens instead.

use std::path::Path;

use anyhow::{Context as _, bail};
use jsonwebtoken::jwk::JwkSet;

use crate::config::{Config, Secret};

/// The file of a zero-setup folder's generated key.
pub const KEY_FILE: &str = "auth.key";

/// The shortest deployment key accepted.
pub const MIN_KEY_LEN: usize = 32;

/// The deployment's signing key: configured, or (zero-setup only) the data
/// folder's, generated on first use.
pub fn deployment_key(config: &Config) -> anyhow::Result<Secret> {
    if let Some(key) = &config.auth_key {
        return checked(key).context("HEARTY_AUTH_KEY");
    }
    if config.amqp_url.is_some() {
        bail!(
            "HEARTY_AUTH_KEY is not set: every process of a deployment must share one signing key \
             (an owner verifies the tokens an API replica forwards); generate one with \
             `openssl rand -base64 48` and give it to every process"
        );
    }
    folder_key(&config.data_dir)
}

/// The key of a data folder: read, or generated and written (mode 0600)
/// when there is none.
pub fn folder_key(dir: &Path) -> anyhow::Result<Secret> {
    if let Some(key) = existing_folder_key(dir)? {
        return Ok(key);
    }
    let path = dir.join(KEY_FILE);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = generate();
    write_private(&path, key.expose())?;
    // Another process may have written its own meanwhile: the file's wins.
    let text = std::fs::read_to_string(&path)?;
    parse_key(text.trim()).with_context(|| format!("{}", path.display()))
}

/// The key a data folder already has, if any.
pub fn existing_folder_key(dir: &Path) -> anyhow::Result<Option<Secret>> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_key(text.trim())
            .map(Some)
            .with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A configured key, checked (the error never repeats it).
pub fn checked(key: &Secret) -> anyhow::Result<Secret> {
    parse_key(key.expose())
}

/// A key as configured: at least [`MIN_KEY_LEN`] characters.
pub fn parse_key(raw: &str) -> anyhow::Result<Secret> {
    if raw.chars().count() < MIN_KEY_LEN {
        bail!(
            "a signing key must be at least {MIN_KEY_LEN} characters (`openssl rand -base64 48`)"
        );
    }
    Ok(Secret::new(raw))
}

/// 48 random bytes, base64: 384 bits.
fn generate() -> Secret {
    use base64::Engine as _;
    let bytes: [u8; 48] = rand::random();
    Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Writes `text` to a new file only its owner can read; an existing file is
/// left as it is. The file appears whole or not at all (written aside, then
/// linked into place), so a process starting beside this one never reads
/// half a key.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let aside = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let written = options
        .open(&aside)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// An external identity provider: its keys, and the issuer and audience its
/// tokens must name.
#[derive(Debug, Clone)]
pub struct External {
    pub keys: JwkSet,
    pub issuer: String,
    pub audience: String,
}

/// The external identity provider of `config`, if one is configured: its
/// JWKS read from a file or fetched from an `http://` URL at start-up.
pub async fn external(config: &Config) -> anyhow::Result<Option<External>> {
    let Some(source) = &config.auth_jwks else {
        return Ok(None);
    };
    let (Some(issuer), Some(audience)) = (&config.auth_issuer, &config.auth_audience) else {
        bail!(
            "HEARTY_AUTH_JWKS needs HEARTY_AUTH_ISSUER and HEARTY_AUTH_AUDIENCE: the tokens' `iss` and `aud` are checked"
        );
    };
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        fetch(source).await?
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("reading HEARTY_AUTH_JWKS {source}"))?
    };
    let keys: JwkSet = serde_json::from_str(&text)
        .with_context(|| format!("HEARTY_AUTH_JWKS {source} is not a JWKS"))?;
    if keys.keys.is_empty() {
        bail!("HEARTY_AUTH_JWKS {source} has no keys");
    }
    Ok(Some(External {
        keys,
        issuer: issuer.clone(),
        audience: audience.clone(),
    }))
}

async fn fetch(url: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("fetching HEARTY_AUTH_JWKS {url}"))?;
    if !response.status().is_success() {
        bail!("fetching HEARTY_AUTH_JWKS {url}: {}", response.status());
    }
    Ok(response.text().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_keeps_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = folder_key(dir.path()).expect("generated");
        assert!(first.expose().len() >= MIN_KEY_LEN);
        assert_eq!(folder_key(dir.path()).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only its owner reads it");
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(parse_key("too-short").is_err());
        assert!(parse_key(&"k".repeat(MIN_KEY_LEN)).is_ok());
    }
}
