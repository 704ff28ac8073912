//! The users file: a CSV with a header and at least `uid,notebooks` (the account name and the
//! directory of its notebooks, absolute or relative to the CSV). Other columns (name, email, ...)
//! are allowed and ignored: nothing but the uid's pseudonym ever leaves this service.

use std::path::{Path, PathBuf};

/// One learner whose notebooks are watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: String,
    /// Absolute (made absolute against the CSV's directory).
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// Reads the users file. Rows with an empty or unsafe uid are skipped with a warning (a uid names
/// a directory of the snapshot store); a missing `uid` or `notebooks` column is an error.
pub fn load(path: &Path) -> Result<Vec<User>, UsersError> {
    let text = std::fs::read(path).map_err(|source| UsersError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, &base_of(path)).map_err(|message| UsersError::Format {
        path: path.into(),
        message,
    })
}

/// The absolute directory of the users file at `path`, against which relative notebooks
/// directories are taken. A bare file name (the default `users.csv`) has an empty parent, which
/// is the working directory: left empty, every directory stayed relative, and no watch
/// notification (whose paths are absolute) matched a user.
fn base_of(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf())
}

/// Parses CSV text; relative directories are taken relative to `base`.
pub fn parse(text: &[u8], base: &Path) -> Result<Vec<User>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text);
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("no {name:?} column in the header"))
    };
    let (uid_col, dir_col) = (column("uid")?, column("notebooks")?);
    let mut users = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.map_err(|e| e.to_string())?;
        let (uid, dir) = (
            row.get(uid_col).unwrap_or(""),
            row.get(dir_col).unwrap_or(""),
        );
        if !is_safe_uid(uid) || dir.is_empty() {
            tracing::warn!(
                row = line + 2,
                "users file row skipped: needs a uid ([A-Za-z0-9._-], not starting with a dot) and a notebooks directory"
            );
            continue;
        }
        users.push(User {
            uid: uid.to_string(),
            dir: base.join(dir),
        });
    }
    Ok(users)
}

fn is_safe_uid(uid: &str) -> bool {
    !uid.is_empty()
        && !uid.starts_with('.')
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uid_and_dir_resolving_relative_dirs_and_ignoring_extra_columns() {
        let csv = b"name,uid,email,notebooks\nAnn Lee,ann,ann@example.org,homes/ann\n\
                    Bob,bob,bob@example.org,/srv/bob/notebooks\n";
        let users = parse(csv, Path::new("/etc/learntrail")).unwrap();
        assert_eq!(
            users,
            vec![
                User {
                    uid: "ann".into(),
                    dir: "/etc/learntrail/homes/ann".into()
                },
                User {
                    uid: "bob".into(),
                    dir: "/srv/bob/notebooks".into()
                },
            ]
        );
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_working_directory() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(base_of(Path::new("users.csv")), here);
        assert_eq!(base_of(Path::new("conf/users.csv")), here.join("conf"));
        assert_eq!(base_of(Path::new("/etc/users.csv")), Path::new("/etc"));
        let users = parse(
            b"uid,notebooks
ann,homes/ann
",
            &base_of(Path::new("users.csv")),
        );
        assert!(users.unwrap()[0].dir.is_absolute());
    }

    #[test]
    fn unsafe_rows_are_skipped_and_missing_columns_are_errors() {
        let csv = b"uid,notebooks\n../../etc,x\n,y\n.hidden,z\nok,\ncarol,c\n";
        let users = parse(csv, Path::new("/b")).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].uid, "carol");
        assert!(parse(b"user,dir\na,b\n", Path::new("/")).is_err());
    }
}
