//! Mounts that make a directory misbehave for storage-error tests: a read-only bind mount of the
//! directory onto itself, or a tiny tmpfs over it. Needs root (CAP_SYS_ADMIN); as root, file
//! permission bits do not stop writes, so `chmod` cannot make a read-only cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mount over `target`, unmounted when dropped.
pub struct Mount {
    target: PathBuf,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount").args(args).output().map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("mount {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Mount {
    /// Binds `target` onto itself and remounts that bind read-only: every write under it fails
    /// with EROFS, reads still work, and what was there stays visible.
    pub fn read_only(target: &Path) -> Result<Self, String> {
        let t = target.to_str().expect("UTF-8 path");
        run(&["--bind", t, t])?;
        let mount = Self { target: target.to_owned() };
        run(&["-o", "remount,bind,ro", t])?;
        Ok(mount)
    }

    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `4m`) over `target`, hiding what
    /// was there: writes past the size fail with ENOSPC.
    pub fn tmpfs(target: &Path, size: &str) -> Result<Self, String> {
        let t = target.to_str().expect("UTF-8 path");
        run(&["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", t])?;
        Ok(Self { target: target.to_owned() })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now (also done on drop).
    pub fn unmount(self) {}
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A process may still hold a file open under the mount for a moment: retry, then detach.
        for _ in 0..20 {
            if Command::new("umount").arg(&self.target).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}
