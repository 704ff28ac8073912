//! The roster: real names of learners from a CSV (`uid,name,email`, the notebook seed's
//! users.csv shape, plus an optional `actor` column). Each uid's actor is the pseudonym the shim
//! and the notebook scanner give it ([`learntrail_proto::pseudonym::pseudonym`] with
//! `PSEUDONYM_KEY`); an `actor` cell (a token `sub`, an LMS `anon_username`, a browser id) wins.
//! Names are shown only to instructor and service tokens ([`crate::dashboard`]).

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;

/// A roster entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Person {
    pub uid: String,
    pub name: String,
    pub email: String,
}

/// Names by actor.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    by_actor: HashMap<String, Person>,
}

impl Roster {
    /// Reads a roster file; rows without a name or an actor (no `actor` cell and no key) are skipped.
    pub fn load(path: &Path, key: Option<&str>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read ROSTER_CSV {}", path.display()))?;
        Ok(Self::parse(&text, key))
    }

    /// Parses roster text (a header line naming the columns, then one learner a line).
    pub fn parse(text: &str, key: Option<&str>) -> Self {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        let col = |name: &str| header.iter().position(|h| h == name);
        let (uid, name, email, actor) = (col("uid"), col("name"), col("email"), col("actor"));
        let mut by_actor = HashMap::new();
        for line in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let cell = |i: Option<usize>| i.and_then(|i| cells.get(i)).copied().unwrap_or("");
            let person = Person {
                uid: cell(uid).to_string(),
                name: cell(name).to_string(),
                email: cell(email).to_string(),
            };
            let actor = match (cell(actor), key) {
                (a, _) if !a.is_empty() => a.to_string(),
                (_, Some(key)) if !person.uid.is_empty() => {
                    learntrail_proto::pseudonym::pseudonym(key, &person.uid)
                }
                _ => continue,
            };
            if !person.name.is_empty() {
                by_actor.insert(actor, person);
            }
        }
        Self { by_actor }
    }

    /// The person behind `actor`, if the roster names them.
    pub fn get(&self, actor: &str) -> Option<&Person> {
        self.by_actor.get(actor)
    }

    /// How many learners the roster names.
    pub fn len(&self) -> usize {
        self.by_actor.len()
    }

    /// Whether the roster names nobody.
    pub fn is_empty(&self) -> bool {
        self.by_actor.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_map_to_the_shims_pseudonyms_and_an_actor_cell_wins() {
        let roster = Roster::parse(
            "uid,name,email,actor\nalice,Alice A,a@x\nbob,Bob B,b@x,lms-bob\n,Nobody,n@x\n",
            Some("k"),
        );
        let alice = learntrail_proto::pseudonym::pseudonym("k", "alice");
        assert_eq!(roster.get(&alice).unwrap().name, "Alice A");
        assert_eq!(roster.get("lms-bob").unwrap().email, "b@x");
        assert_eq!(roster.len(), 2);
        let unkeyed = Roster::parse("uid,name,email\nalice,Alice A,a@x\n", None);
        assert!(unkeyed.is_empty());
    }
}
