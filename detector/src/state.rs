//! The agent's state directory: files written atomically, so that a crash or a full disk never
//! leaves a half-written model, blocklist or incident log behind.

use std::{fs, path::Path};

use anyhow::Context;

/// Writes `bytes` to `path` atomically ([`crate::atomic_write`]): readers see the old or the new
/// content, never a mix. On error (disk full, read-only, ...) the old file is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::atomic_write::write_atomic(path, bytes).with_context(|| {
        format!(
            "cannot write {} (the previous version is kept)",
            path.display()
        )
    })
}

/// Creates the state directory, readable by root only.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to root", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_a_failed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("detector-state-{}", std::process::id()));
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // A directory where the file should go: the rename fails, nothing is lost.
        let blocked = dir.join("sub");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        let err = format!("{:#}", write_atomic(&blocked, b"three").unwrap_err());
        assert!(err.contains("previous version is kept"), "{err}");
        assert!(blocked.join("inner").is_dir());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "no temporary file left behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
