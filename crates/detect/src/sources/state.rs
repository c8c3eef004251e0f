//! Small state files (read positions, journal cursors) under the state
//! directory, replaced atomically (write, fsync, rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The state file of source `name` with `suffix` (`pos`, `cursor`).
pub fn path(state_dir: &Path, name: &str, suffix: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    // The name is sanitized; add a short hash so `a/b` and `a_b` differ.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    state_dir.join(format!("{safe}-{:08x}.{suffix}", h as u32))
}

pub fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

pub fn write(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)
}
