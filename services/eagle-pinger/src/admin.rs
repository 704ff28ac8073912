//! The operator's commands: `eagle-pinger import users.csv` (bulk registration; each line is
//! checked like `POST /api/user`, a bad line is reported by number and never blocks the good
//! ones) and `eagle-pinger rekey` (re-seals every password under the current key after a
//! rotation).
//!
//! CSV: a header line naming the columns (`cloud_id,user_email,user_pw,api,address,actor,course`,
//! any order; `address`, `actor`, `course` optional), then one meter per line. Fields may be
//! double-quoted (`"a,b"`, `""` for a quote).

use std::path::PathBuf;

use learntrail_runtime::CancellationToken;

use crate::{
    StoreArgs,
    record::{self, UserInput},
    registry::{Registry, RegistryError},
};

/// eagle-pinger's commands besides serving.
#[derive(Debug, clap::Parser)]
#[command(name = "eagle-pinger", version)]
pub struct Admin {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register the meters of a CSV file (header: cloud_id,user_email,user_pw,api,address,actor,course)
    Import {
        /// The CSV file
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-seal every stored password under EAGLE_SECRET_KEY (old keys in EAGLE_OLD_KEYS)
    Rekey {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    /// `line N: problem` for every refused line.
    pub refused: Vec<String>,
}

/// Runs a command, printing its report; an error when something was refused.
pub async fn run(admin: Admin) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    match admin.command {
        Command::Import { file, store } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let registry = store.connect(&token).await?;
            let report = import(&registry, &text).await?;
            learntrail_runtime::cli::print(&format!(
                "imported {}: {} created, {} updated, {} refused\n",
                file.display(),
                report.created,
                report.updated,
                report.refused.len()
            ));
            for line in &report.refused {
                eprintln!("{line}");
            }
            anyhow::ensure!(
                report.refused.is_empty(),
                "{} lines refused",
                report.refused.len()
            );
        }
        Command::Rekey { store } => {
            let registry = store.connect(&token).await?;
            let report = registry.rekey().await?;
            learntrail_runtime::cli::print(&format!(
                "rekey to key {}: {} re-sealed, {} already current, {} undecryptable\n",
                registry.keyring().current_id(),
                report.resealed,
                report.current,
                report.failed.len()
            ));
            anyhow::ensure!(
                report.failed.is_empty(),
                "no configured key opens the passwords of {}",
                report.failed.join(", ")
            );
        }
    }
    Ok(())
}

/// Registers every good line of `csv`. A line whose stored record cannot be read is refused
/// (its record is left as it is); only Redis itself failing stops the import.
pub async fn import(registry: &Registry, csv: &str) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut lines = csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(report);
    };
    let columns: Vec<String> = fields(header)
        .into_iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    const KNOWN: [&str; 7] = [
        "cloud_id",
        "user_email",
        "user_pw",
        "api",
        "address",
        "actor",
        "course",
    ];
    if let Some(unknown) = columns.iter().find(|c| !KNOWN.contains(&c.as_str())) {
        anyhow::bail!(
            "unknown CSV column {unknown:?}; the columns are {}",
            KNOWN.join(",")
        );
    }
    anyhow::ensure!(
        columns.iter().any(|c| c == "cloud_id"),
        "the CSV header has no cloud_id column"
    );
    for (index, line) in lines {
        let number = index + 1;
        let values = fields(line);
        let get = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| values.get(i))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let raw_id = get("cloud_id").unwrap_or_default();
        let input = UserInput {
            user_email: get("user_email"),
            user_pw: get("user_pw"),
            api: get("api"),
            address: get("address"),
            actor: get("actor"),
            course: get("course"),
        };
        let existing = match record::cloud_id(&raw_id) {
            Some(id) => match registry.get(&id).await {
                Ok(existing) => existing,
                // the reason is not repeated: serde may quote the stored values
                Err(RegistryError::Corrupt(..)) => {
                    report.refused.push(format!(
                        "line {number}: the stored record of {id} cannot be read; delete it \
                         (DELETE /api/user/{id}) and import the line again"
                    ));
                    continue;
                }
                Err(err) => return Err(err.into()),
            },
            None => None,
        };
        match record::validate(&raw_id, input, existing.as_ref()) {
            Ok(registration) => {
                if registry.put(&registration).await?.0 {
                    report.created += 1;
                } else {
                    report.updated += 1;
                }
            }
            Err(problems) => {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                report
                    .refused
                    .push(format!("line {number}: {}", text.join("; ")));
            }
        }
    }
    Ok(report)
}

/// Splits one CSV line, honouring double quotes.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().expect("one field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().expect("one field").push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields() {
        assert_eq!(fields("a,b,,c"), ["a", "b", "", "c"]);
        assert_eq!(
            fields(r#"0012ab,"pw,with ""comma""",x"#),
            ["0012ab", r#"pw,with "comma""#, "x"]
        );
    }
}
