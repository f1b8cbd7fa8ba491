//! `[fleet]`: where the agent publishes (NATS servers), as whom (host id, credentials), and how
//! much it keeps on disk while they are unreachable. Off while `servers` is empty.

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::config::Dur;

/// `[fleet]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSection {
    /// NATS servers (`nats://host:4222`, `tls://host:4222` or `host:4222`); empty = no fleet,
    /// the agent works alone.
    pub servers: Vec<String>,
    /// This host's name in subjects (`detector.<host_id>.alert`); empty = the kernel's
    /// hostname. Letters, digits, `-` and `_` only: a dot, `*` or `>` would change the subject.
    pub host_id: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed); "" = none.
    pub credentials: PathBuf,
    /// A file holding an NKey seed (`SU...`), for servers that list users by public key; "" =
    /// none. Not together with `credentials`.
    pub nkey_seed_file: PathBuf,
    /// A PEM file of the CA that signed the servers' certificates; set, TLS is required.
    pub tls_ca: PathBuf,
    /// Events kept on disk (`fleet-spool.jsonl` in the state directory) while the servers are
    /// unreachable; beyond this, new events are dropped and counted.
    pub spool_bytes: u64,
    /// Events waiting for the publisher; beyond this the agent's loop drops (and counts) them
    /// rather than wait.
    pub queue: usize,
    /// How often a heartbeat goes out.
    pub heartbeat: Dur,
    /// How long one publish waits for the stream's acknowledgement.
    pub ack_timeout: Dur,
    /// The fleet trainer's Ed25519 public key (base64, as `detector fleet keygen` prints it);
    /// set (here or in `model_public_key_file`), the agent follows the fleet model. "" = the
    /// agent ignores fleet models.
    pub model_public_key: String,
    /// A file holding that key (the `.pub` file `detector fleet keygen` writes). Not together
    /// with `model_public_key`.
    pub model_public_key_file: PathBuf,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            host_id: String::new(),
            credentials: PathBuf::new(),
            nkey_seed_file: PathBuf::new(),
            tls_ca: PathBuf::new(),
            spool_bytes: 64 << 20,
            queue: 4096,
            heartbeat: Dur(Duration::from_secs(10)),
            ack_timeout: Dur(Duration::from_secs(5)),
            model_public_key: String::new(),
            model_public_key_file: PathBuf::new(),
        }
    }
}

impl FleetSection {
    /// Whether the fleet is on.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for s in &self.servers {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                bail!("fleet.servers: {s:?} is not a NATS server address (nats://host:4222): {e}");
            }
        }
        if !self.host_id.is_empty() {
            check_host_id(&self.host_id).map_err(|e| anyhow::anyhow!("fleet.host_id: {e}"))?;
        }
        if !self.credentials.as_os_str().is_empty() && !self.nkey_seed_file.as_os_str().is_empty() {
            bail!("fleet.credentials and fleet.nkey_seed_file: set one, not both");
        }
        if self.enabled() {
            for (k, p) in [
                ("fleet.credentials", &self.credentials),
                ("fleet.nkey_seed_file", &self.nkey_seed_file),
                ("fleet.tls_ca", &self.tls_ca),
            ] {
                if !p.as_os_str().is_empty() && !p.is_file() {
                    bail!("{k}: {} is not a readable file", p.display());
                }
            }
        }
        if self.spool_bytes < 4096 {
            bail!(
                "fleet.spool_bytes must be at least 4096, got {}",
                self.spool_bytes
            );
        }
        if self.queue == 0 {
            bail!("fleet.queue must be at least 1");
        }
        if self.heartbeat.0 < Duration::from_millis(100) {
            bail!("fleet.heartbeat must be at least 100ms");
        }
        if self.ack_timeout.0.is_zero() {
            bail!("fleet.ack_timeout must be greater than zero");
        }
        if !self.model_public_key.is_empty() && !self.model_public_key_file.as_os_str().is_empty() {
            bail!("fleet.model_public_key and fleet.model_public_key_file: set one, not both");
        }
        if !self.model_public_key.is_empty() || self.enabled() {
            self.model_public_key()?;
        }
        Ok(())
    }

    /// The fleet model's public key (32 bytes), if the agent follows fleet models.
    pub fn model_public_key(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let (key, text) = if !self.model_public_key.is_empty() {
            ("fleet.model_public_key", self.model_public_key.clone())
        } else if !self.model_public_key_file.as_os_str().is_empty() {
            let p = &self.model_public_key_file;
            let t = std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!(
                    "fleet.model_public_key_file: cannot read {}: {e}",
                    p.display()
                )
            })?;
            ("fleet.model_public_key_file", t)
        } else {
            return Ok(None);
        };
        super::models::parse_public_key(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{key}: {e:#}"))
    }

    /// The host id in force: `host_id`, or the hostname made subject-safe.
    pub fn host(&self) -> anyhow::Result<String> {
        if !self.host_id.is_empty() {
            return Ok(self.host_id.clone());
        }
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name: String = raw
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() {
            bail!("fleet.host_id is empty and the hostname is unknown: set fleet.host_id");
        }
        Ok(name)
    }
}

/// A host id is one subject token: ASCII letters, digits, `-`, `_`; at most 64 bytes.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("{id:?} must be 1 to 64 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{id:?} has {c:?}: only letters, digits, '-' and '_' (it is one subject token)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, "f.toml").unwrap_err())
    }

    #[test]
    fn off_by_default_and_on_with_servers() {
        let c = Config::default();
        assert!(!c.fleet.enabled());
        let c = Config::parse(
            "[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nhost_id = \"web-1\"\n",
            "f.toml",
        )
        .unwrap();
        assert!(c.fleet.enabled());
        assert_eq!(c.fleet.host().unwrap(), "web-1");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[fleet]\nservers = [\"nats://host:port\"]\n",
                "fleet.servers",
            ),
            ("[fleet]\nhost_id = \"a.b\"\n", "fleet.host_id"),
            ("[fleet]\nhost_id = \"a>\"\n", "fleet.host_id"),
            (
                "[fleet]\nservers = [\"nats://h:4222\"]\ncredentials = \"/nonexistent.creds\"\n",
                "fleet.credentials",
            ),
            (
                "[fleet]\ncredentials = \"a\"\nnkey_seed_file = \"b\"\n",
                "fleet.nkey_seed_file",
            ),
            ("[fleet]\nspool_bytes = 10\n", "fleet.spool_bytes"),
            ("[fleet]\nqueue = 0\n", "fleet.queue"),
            ("[fleet]\nheartbeat = \"1ms\"\n", "fleet.heartbeat"),
            ("[fleet]\nserver = []\n", "server"),
            (
                "[fleet]\nmodel_public_key = \"AAAA\"\n",
                "fleet.model_public_key",
            ),
            (
                "[fleet]\nmodel_public_key = \"not base64!\"\n",
                "fleet.model_public_key",
            ),
            (
                "[fleet]\nservers = [\"nats://h:4222\"]\nmodel_public_key_file = \"/nonexistent.pub\"\n",
                "fleet.model_public_key_file",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
