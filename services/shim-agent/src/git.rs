//! Git state of the repository holding a script, read from `.git` directly (never by spawning
//! git, which would slow every run down): root, branch, commit, dirty, and the `origin` remote
//! with any credentials removed.
//!
//! "Dirty" compares the index's recorded size and mtime of each tracked file with the working
//! tree (what `git status` does before hashing), and counts a tracked file that is gone. It may
//! call a touched-but-unchanged file dirty; it never calls a changed one clean unless its size and
//! mtime were both preserved.

use std::{
    fs,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use learntrail_proto::v1::GitState;

/// Stop checking files for dirtiness after this many index entries (huge repositories).
const MAX_INDEX_ENTRIES: usize = 20_000;

/// The state of the repository containing `start` (a file or directory), if any.
pub fn state(start: &Path) -> Option<GitState> {
    let (root, git_dir) = find_repo(start)?;
    let head = fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let common_dir = common_dir(&git_dir);
    let (branch, commit) = match head.strip_prefix("ref: ") {
        Some(reference) => (
            reference
                .strip_prefix("refs/heads/")
                .unwrap_or(reference)
                .to_string(),
            resolve_ref(&git_dir, &common_dir, reference).unwrap_or_default(),
        ),
        None => (String::new(), head.to_string()),
    };
    let remote_url = fs::read_to_string(common_dir.join("config"))
        .ok()
        .and_then(|config| remote_url(&config, "origin"))
        .map(|url| strip_credentials(&url))
        .unwrap_or_default();
    Some(GitState {
        root: root.display().to_string(),
        branch,
        commit,
        dirty: is_dirty(&root, &git_dir.join("index")),
        remote_url,
    })
}

/// Walks up from `start` to the first directory holding `.git` (a directory, or a file saying
/// `gitdir: <path>` for worktrees and submodules).
fn find_repo(start: &Path) -> Option<(PathBuf, PathBuf)> {
    let start = if start.is_dir() {
        start
    } else {
        start.parent()?
    };
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        if dot_git.is_dir() {
            return Some((dir.to_path_buf(), dot_git));
        }
        if let Ok(text) = fs::read_to_string(&dot_git) {
            let target = text.trim().strip_prefix("gitdir: ")?;
            return Some((dir.to_path_buf(), dir.join(target)));
        }
    }
    None
}

/// Worktrees keep refs in the main repository, named by a `commondir` file.
fn common_dir(git_dir: &Path) -> PathBuf {
    fs::read_to_string(git_dir.join("commondir"))
        .map(|rel| git_dir.join(rel.trim()))
        .unwrap_or_else(|_| git_dir.to_path_buf())
}

fn resolve_ref(git_dir: &Path, common_dir: &Path, reference: &str) -> Option<String> {
    for dir in [git_dir, common_dir] {
        if let Ok(text) = fs::read_to_string(dir.join(reference)) {
            return Some(text.trim().to_string());
        }
    }
    let packed = fs::read_to_string(common_dir.join("packed-refs")).ok()?;
    packed_ref(&packed, reference)
}

/// Looks `reference` up in the text of a `packed-refs` file.
fn packed_ref(packed: &str, reference: &str) -> Option<String> {
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (hash, name) = l.split_once(' ')?;
            (name.trim() == reference).then(|| hash.to_string())
        })
}

/// The `url` of `[remote "<name>"]` in a git config file.
fn remote_url(config: &str, name: &str) -> Option<String> {
    let header = format!("[remote \"{name}\"]");
    let mut in_section = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == header;
        } else if in_section
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "url"
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// `https://user:token@host/x.git` → `https://host/x.git`; scp-style `git@host:x.git` is kept
/// (the user there is not a secret).
pub fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Compares the index's size and mtime of every tracked file with the working tree.
fn is_dirty(root: &Path, index: &Path) -> bool {
    let Ok(data) = fs::read(index) else {
        return false;
    };
    let Some(entries) = index_entries(&data) else {
        return false;
    };
    entries.into_iter().take(MAX_INDEX_ENTRIES).any(|entry| {
        match fs::symlink_metadata(root.join(&entry.path)) {
            Err(_) => true,
            Ok(meta) => {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as u32);
                meta.len() as u32 != entry.size || mtime != entry.mtime_secs
            }
        }
    })
}

#[derive(Debug, PartialEq)]
struct IndexEntry {
    path: String,
    mtime_secs: u32,
    size: u32,
}

/// Parses the entries of a git index (`DIRC`, versions 2, 3 and 4).
fn index_entries(data: &[u8]) -> Option<Vec<IndexEntry>> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    if data.get(..4)? != b"DIRC" {
        return None;
    }
    let version = be32(4)?;
    let count = be32(8)? as usize;
    let mut at = 12;
    let mut entries = Vec::with_capacity(count.min(MAX_INDEX_ENTRIES));
    let mut previous: Vec<u8> = Vec::new();
    for _ in 0..count.min(MAX_INDEX_ENTRIES) {
        let start = at;
        let mtime_secs = be32(at + 8)?;
        let size = be32(at + 36)?;
        let flags = u16::from_be_bytes(data.get(at + 60..at + 62)?.try_into().ok()?);
        at += 62;
        if version >= 3 && flags & 0x4000 != 0 {
            at += 2; // extended flags
        }
        if version >= 4 {
            // prefix compression: a varint of bytes to drop from the previous path, then a NUL-terminated suffix
            let (strip, used) = varint(data.get(at..)?)?;
            at += used;
            let end = at + data.get(at..)?.iter().position(|&b| b == 0)?;
            // in bytes: the cut may fall inside a multi-byte character
            let keep = previous.len().checked_sub(strip as usize)?;
            previous.truncate(keep);
            previous.extend_from_slice(&data[at..end]);
            at = end + 1;
        } else {
            let end = at + data.get(at..)?.iter().position(|&b| b == 0)?;
            previous.clear();
            previous.extend_from_slice(&data[at..end]);
            // entries are padded with NULs to a multiple of 8 bytes
            at = start + ((end - start + 8) & !7);
        };
        entries.push(IndexEntry {
            path: String::from_utf8_lossy(&previous).into_owned(),
            mtime_secs,
            size,
        });
    }
    Some(entries)
}

/// Git's offset varint (used by index v4).
fn varint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = u64::from(*data.first()? & 0x7f);
    let mut used = 1;
    let mut byte = data[0];
    while byte & 0x80 != 0 {
        byte = *data.get(used)?;
        value = ((value + 1) << 7) | u64::from(byte & 0x7f);
        used += 1;
    }
    Some((value, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped() {
        assert_eq!(
            strip_credentials("https://alice:s3cret@github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(
            strip_credentials("https://ghp_token@github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(
            strip_credentials("https://github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(
            strip_credentials("git@github.com:a/b.git"),
            "git@github.com:a/b.git"
        );
        assert_eq!(
            strip_credentials("ssh://git@host/x@y.git"),
            "ssh://host/x@y.git"
        );
    }

    #[test]
    fn remote_and_packed_refs() {
        let config = "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://u/x.git\n[remote \"origin\"]\n\turl = https://me:pw@h/x.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n";
        assert_eq!(
            remote_url(config, "origin").as_deref(),
            Some("https://me:pw@h/x.git")
        );
        assert_eq!(remote_url(config, "nope"), None);
        let packed = "# pack-refs with: peeled fully-peeled sorted\nabc123 refs/heads/main\n^def456\n0f0f0f refs/tags/v1\n";
        assert_eq!(
            packed_ref(packed, "refs/heads/main").as_deref(),
            Some("abc123")
        );
        assert_eq!(packed_ref(packed, "refs/heads/other"), None);
    }

    fn index_v2(paths: &[(&str, u32, u32)]) -> Vec<u8> {
        let mut data = b"DIRC".to_vec();
        data.extend(2u32.to_be_bytes());
        data.extend((paths.len() as u32).to_be_bytes());
        for (path, mtime, size) in paths {
            let start = data.len();
            let mut entry = vec![0u8; 62];
            entry[8..12].copy_from_slice(&mtime.to_be_bytes());
            entry[36..40].copy_from_slice(&size.to_be_bytes());
            entry[60..62].copy_from_slice(&(path.len() as u16).to_be_bytes());
            data.extend(entry);
            data.extend(path.as_bytes());
            let len = data.len() - start;
            data.extend(vec![0u8; 8 - len % 8]);
        }
        data
    }

    #[test]
    fn parses_index_entries() {
        let data = index_v2(&[("a.rb", 100, 7), ("lib/long_name.rb", 200, 9)]);
        assert_eq!(
            index_entries(&data).unwrap(),
            vec![
                IndexEntry {
                    path: "a.rb".into(),
                    mtime_secs: 100,
                    size: 7
                },
                IndexEntry {
                    path: "lib/long_name.rb".into(),
                    mtime_secs: 200,
                    size: 9
                }
            ]
        );
        assert_eq!(index_entries(b"nope"), None);
    }

    #[test]
    fn index_v4_prefix_cuts_inside_a_character() {
        // "café.rb" then "cafè.rb": the shared prefix ends in the middle of the é/è bytes
        let mut data = b"DIRC".to_vec();
        data.extend(4u32.to_be_bytes());
        data.extend(2u32.to_be_bytes());
        for (strip, suffix) in [(0u8, "café.rb".as_bytes()), (4, &b"\xa8.rb"[..])] {
            let mut entry = vec![0u8; 62];
            entry[36..40].copy_from_slice(&5u32.to_be_bytes());
            data.extend(entry);
            data.push(strip);
            data.extend(suffix);
            data.push(0);
        }
        let paths: Vec<String> = index_entries(&data)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["café.rb", "cafè.rb"]);
    }
}
