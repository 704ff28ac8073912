//! Which files of a user's directory are looked at: regular files only, never through a symlink
//! (a link to `/etc` in a student's directory is not followed), never onto another file system,
//! and never Jupyter's `.ipynb_checkpoints/`, hidden files or editor temp files.

use std::{
    fs::Metadata,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

/// True for names never scanned: hidden files and directories (`.ipynb_checkpoints`, `.git`,
/// Jupyter's `.~name` save copies, vim's `.name.swp`), and editor backups and temp files
/// (`name~`, `#name#`, `*.tmp`, `*.part`, `*.swp`, `*.crdownload`).
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || [".tmp", ".part", ".swp", ".swx", ".crdownload"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Every file to look at under `root`, with its metadata (not following links).
pub fn files(root: &Path) -> Vec<(PathBuf, Metadata)> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .same_file_system(true)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_ignored(&e.file_name().to_string_lossy()))
        .filter_map(|entry| match entry {
            Ok(entry) if entry.file_type().is_file() => {
                let meta = entry.metadata().ok()?;
                Some((entry.into_path(), meta))
            }
            Ok(_) => None,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read during the scan");
                None
            }
        })
        .collect()
}

/// What to do with a path a notification named.
#[derive(Debug)]
pub enum Found {
    File(Metadata),
    /// A directory (created or moved in): walk it.
    Dir,
    /// Gone, ignored, a link, on another file system, or outside `root`.
    Skip,
}

/// Checks `path` under `root` the way [`files`] would reach it: every component below `root`
/// is a real directory (not a symlink), not ignored, and on `root`'s file system.
pub fn check(root: &Path, path: &Path) -> Found {
    let Ok(rel) = path.strip_prefix(root) else {
        return Found::Skip;
    };
    let Ok(root_meta) = std::fs::metadata(root) else {
        return Found::Skip;
    };
    let mut current = root.to_path_buf();
    let mut meta = None;
    for component in rel.components() {
        let Component::Normal(name) = component else {
            return Found::Skip;
        };
        if is_ignored(&name.to_string_lossy()) {
            return Found::Skip;
        }
        current.push(name);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() || m.dev() != root_meta.dev() => {
                return Found::Skip;
            }
            Ok(m) => meta = Some(m),
            Err(_) => return Found::Skip,
        }
    }
    match meta {
        Some(m) if m.is_file() => Found::File(m),
        Some(m) if m.is_dir() => Found::Dir,
        _ => Found::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_hidden_and_temp_files_are_ignored() {
        for name in [
            ".ipynb_checkpoints",
            ".~problem1.ipynb",
            ".problem1.ipynb.swp",
            "problem1.ipynb~",
            "#notes#",
            "x.tmp",
            "download.part",
        ] {
            assert!(is_ignored(name), "{name}");
        }
        for name in ["problem1.ipynb", "data.csv", "a~b.py"] {
            assert!(!is_ignored(name), "{name}");
        }
    }

    #[test]
    fn links_out_of_the_directory_and_ignored_dirs_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("ps1/.ipynb_checkpoints")).unwrap();
        std::fs::write(root.join("ps1/p.ipynb"), "{}").unwrap();
        std::fs::write(root.join("ps1/.ipynb_checkpoints/p-checkpoint.ipynb"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        let found: Vec<PathBuf> = files(root).into_iter().map(|(p, _)| p).collect();
        assert_eq!(found, vec![root.join("ps1/p.ipynb")]);
        assert!(matches!(
            check(root, &root.join("ps1/p.ipynb")),
            Found::File(_)
        ));
        assert!(matches!(check(root, &root.join("ps1")), Found::Dir));
        assert!(matches!(check(root, &root.join("etc/passwd")), Found::Skip));
        assert!(matches!(check(root, &root.join("passwd")), Found::Skip));
        assert!(matches!(check(root, Path::new("/etc/passwd")), Found::Skip));
        assert!(matches!(
            check(
                root,
                &root.join("ps1/.ipynb_checkpoints/p-checkpoint.ipynb")
            ),
            Found::Skip
        ));
    }
}
