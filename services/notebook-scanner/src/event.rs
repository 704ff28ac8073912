//! A changed file → its `NotebookSnapshot` event (pure: the caller read, hashed and stored it).

use std::path::{Component, Path};

use learntrail_proto::{
    Event, Payload,
    subject::{kind, source},
    time,
    v1::{Context, Machine, NotebookSnapshot, ProblemResult, problem_result},
};
use sha2::{Digest as _, Sha256};

use crate::notebook::{self, Status, Summary};

/// What is known about one version of one file.
pub struct Version<'a> {
    /// The learner's pseudonym.
    pub actor: &'a str,
    /// Path inside the learner's notebooks directory.
    pub rel: &'a Path,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: &'a str,
    /// Where the snapshot store keeps this version.
    pub snapshot: &'a Path,
}

/// The event id of a version: a ULID whose time is the file's mtime and whose random part comes
/// from the learner, path, content and mtime, so a version re-emitted after a crash carries the
/// same id and JetStream stores it once.
pub fn event_id(v: &Version<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        v.actor.as_bytes(),
        v.rel.as_os_str().as_encoded_bytes(),
        v.sha256.as_bytes(),
        &v.mtime_ns.to_be_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let ms = (v.mtime_ns / 1_000_000).clamp(0, (1 << 48) - 1) as u64;
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random)).to_string()
}

/// The snapshot event; `parsed` is `None` for files that are not notebooks.
pub fn build(
    v: &Version<'_>,
    parsed: Option<Result<Summary, notebook::ParseError>>,
    machine: &Machine,
) -> Event {
    let (from_path_course, from_path_assignment) = path_course_assignment(v.rel);
    let mut snap = NotebookSnapshot {
        path: v.rel.to_string_lossy().into_owned(),
        owner: v.actor.to_string(),
        mtime: time::from_millis(v.mtime_ns / 1_000_000),
        size: v.size,
        sha256: v.sha256.to_string(),
        snapshot: v.snapshot.to_string_lossy().into_owned(),
        assignment: from_path_assignment,
        course: from_path_course,
        ..Default::default()
    };
    match parsed {
        Some(Ok(summary)) => fill(&mut snap, summary),
        Some(Err(err)) => snap.parse_error = err.to_string(),
        None => {}
    }
    Event {
        id: event_id(v),
        occurred_at: snap.mtime,
        received_at: Some(time::now()),
        source: source::NOTEBOOK.into(),
        kind: kind::SNAPSHOT.into(),
        actor: v.actor.to_string(),
        context: Some(Context {
            course: snap.course.clone(),
            machine: Some(Machine {
                user: v.actor.to_string(),
                ..machine.clone()
            }),
            ..Default::default()
        }),
        payload: Some(Payload::NotebookSnapshot(snap)),
    }
}

fn fill(snap: &mut NotebookSnapshot, s: Summary) {
    snap.cells = s.cells;
    snap.code_ok = s.code_ok;
    snap.code_errors = s.code_errors;
    snap.code_not_run = s.code_not_run;
    snap.display_outputs = s.display_outputs;
    snap.stream_outputs = s.stream_outputs;
    snap.error_outputs = s.error_outputs;
    snap.empty_cells = s.empty_cells;
    if let Some(course) = s.course {
        snap.course = course;
    }
    if let Some(assignment) = s.assignment {
        snap.assignment = assignment;
    }
    snap.problems = s
        .problems
        .into_iter()
        .map(|(id, p)| {
            let status = match p.status {
                Status::Passed => problem_result::Status::Passed,
                Status::Failed => problem_result::Status::Failed,
                Status::NotRun => problem_result::Status::NotRun,
                Status::NeedsManualGrading => problem_result::Status::NeedsManualGrading,
                Status::Unanswered => problem_result::Status::Unanswered,
            };
            let result = ProblemResult {
                status: status as i32,
                points: p.points,
                max_points: p.max_points,
            };
            (id, result)
        })
        .collect();
}

/// nbgrader's student layout `<course>/<assignment>/<notebook>`: the notebook's directory is the
/// assignment, the one above it the course (each empty when the path is shorter).
fn path_course_assignment(rel: &Path) -> (String, String) {
    let dirs: Vec<String> = rel
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let n = dirs.len();
    let assignment = dirs.last().cloned().unwrap_or_default();
    let course = if n >= 2 {
        dirs[n - 2].clone()
    } else {
        String::new()
    };
    (course, assignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use learntrail_proto::id::is_valid_id;

    fn version<'a>(rel: &'a Path, sha: &'a str, mtime_ns: i64) -> Version<'a> {
        Version {
            actor: "p1",
            rel,
            size: 10,
            mtime_ns,
            sha256: sha,
            snapshot: Path::new("ann/x"),
        }
    }

    #[test]
    fn ids_are_valid_ulids_stable_per_version_and_distinct_across_versions() {
        let rel = Path::new("cs101/ps1/p.ipynb");
        let a = event_id(&version(rel, "aa", 1_700_000_000_000_000_000));
        assert!(is_valid_id(&a));
        assert_eq!(a, event_id(&version(rel, "aa", 1_700_000_000_000_000_000)));
        assert_ne!(a, event_id(&version(rel, "bb", 1_700_000_000_000_000_000)));
        assert_ne!(a, event_id(&version(rel, "aa", 1_700_000_000_000_000_001)));
        assert_ne!(
            a,
            event_id(&version(
                Path::new("cs101/ps1/q.ipynb"),
                "aa",
                1_700_000_000_000_000_000
            ))
        );
    }

    #[test]
    fn course_and_assignment_come_from_the_path_or_the_metadata() {
        let rel = Path::new("cs101/ps1/p.ipynb");
        let v = version(rel, "aa", 1_700_000_000_000_000_000);
        let event = build(&v, None, &Machine::default());
        let Some(Payload::NotebookSnapshot(snap)) = &event.payload else {
            panic!("no snapshot")
        };
        assert_eq!(
            (snap.course.as_str(), snap.assignment.as_str()),
            ("cs101", "ps1")
        );
        assert_eq!(event.subject(), "events.notebook.snapshot");
        assert!(learntrail_proto::validate::validate_event(&event).is_ok());
        assert_eq!(
            path_course_assignment(Path::new("p.ipynb")),
            (String::new(), String::new())
        );
        let summary = Summary {
            course: Some("meta-course".into()),
            ..Summary::default()
        };
        let event = build(&v, Some(Ok(summary)), &Machine::default());
        assert_eq!(event.context.unwrap().course, "meta-course");
    }
}
