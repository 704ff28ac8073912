//! The seed's walk-through: users a–e are listed, only a and b exist; then c–e appear and b
//! changes. Events, snapshots and backups match; unchanged files emit nothing on the next scan
//! or after a restart.

use std::time::Duration;

use learntrail_proto::{pseudonym::pseudonym, v1::problem_result::Status};

use crate::helpers::*;

fn status(snap: &learntrail_proto::v1::NotebookSnapshot, grade_id: &str) -> (Status, f64, f64) {
    let p = &snap.problems[grade_id];
    (p.status(), p.points, p.max_points)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough() {
    let env = Env::new().await;
    env.write(
        "users.csv",
        b"uid,notebooks,name,email\n\
          a,homes/a,Ann,ann@example.org\n\
          b,homes/b,Bob,bob@example.org\n\
          c,homes/c,Cy,cy@example.org\n\
          d,homes/d,Di,di@example.org\n\
          e,homes/e/work,Ed,ed@example.org\n",
    );
    env.write("homes/a/ps1/problem1.ipynb", &fixture("passing.ipynb"));
    env.write("homes/b/ps1/problem1.ipynb", &fixture("unanswered.ipynb"));
    env.write("homes/b/notes.txt", b"remember: squares");
    // Jupyter's checkpoints and save copies, editor backups: never reported
    env.write(
        "homes/a/ps1/.ipynb_checkpoints/problem1-checkpoint.ipynb",
        &fixture("passing.ipynb"),
    );
    env.write("homes/a/ps1/.~problem1.ipynb", &fixture("passing.ipynb"));
    env.write("homes/a/ps1/problem1.ipynb~", &fixture("passing.ipynb"));
    env.write("homes/b/.problem1.ipynb.swp", b"vim");
    let scanner = env.start(&[]).await;

    let first = env.wait_events(3, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 3);
    let (a, b) = (pseudonym(KEY, "a"), pseudonym(KEY, "b"));
    let a1 = find(&first, &a, "ps1/problem1.ipynb");
    assert_eq!(a1.assignment, "ps1");
    assert_eq!(status(a1, "correct_squares"), (Status::Passed, 2.0, 2.0));
    assert_eq!(
        status(a1, "explain"),
        (Status::NeedsManualGrading, 0.0, 3.0)
    );
    let b1 = find(&first, &b, "ps1/problem1.ipynb");
    assert_eq!(
        status(b1, "correct_squares"),
        (Status::Unanswered, 0.0, 2.0)
    );
    let notes = find(&first, &b, "notes.txt");
    assert!(notes.problems.is_empty() && notes.parse_error.is_empty());
    assert_eq!(notes.size, 17);
    // names and e-mails never ride on events
    let json: String = first.iter().map(|e| e.to_json().unwrap()).collect();
    for secret in ["Ann", "ann@", "homes", "\"a\""] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }
    assert_eq!(
        std::fs::read(env.snapshot("a/ps1/problem1.ipynb")).unwrap(),
        fixture("passing.ipynb")
    );
    assert_eq!(a1.snapshot, "a/ps1/problem1.ipynb");

    // c–e appear (e two levels below what existed), b answers the problem
    env.write("homes/c/ps1/problem1.ipynb", &fixture("failing.ipynb"));
    env.write("homes/d/ps1/problem1.ipynb", &fixture("not_run.ipynb"));
    env.write(
        "homes/e/work/ps1/problem1.ipynb",
        &fixture("truncated.ipynb"),
    );
    env.write("homes/b/ps1/problem1.ipynb", &fixture("passing.ipynb"));
    // directories that appear are watched through their nearest existing parent: well within 3 s
    let all = env.wait_events(7, Duration::from_secs(3)).await;
    let (c, d, e) = (
        pseudonym(KEY, "c"),
        pseudonym(KEY, "d"),
        pseudonym(KEY, "e"),
    );
    assert_eq!(
        status(find(&all, &c, "ps1/problem1.ipynb"), "correct_squares"),
        (Status::Failed, 0.0, 2.0)
    );
    assert_eq!(
        status(find(&all, &d, "ps1/problem1.ipynb"), "partial_squares"),
        (Status::NotRun, 0.0, 1.0)
    );
    let broken = find(&all, &e, "ps1/problem1.ipynb");
    assert!(broken.parse_error.contains("JSON"), "{broken:?}");
    let b2 = find(&all, &b, "ps1/problem1.ipynb");
    assert_eq!(status(b2, "correct_squares"), (Status::Passed, 2.0, 2.0));
    assert_ne!(b2.sha256, b1.sha256);
    // b's snapshot is the new version; the old one is its timestamped backup
    assert_eq!(
        std::fs::read(env.snapshot("b/ps1/problem1.ipynb")).unwrap(),
        fixture("passing.ipynb")
    );
    let backups: Vec<_> = std::fs::read_dir(env.snapshot("b/ps1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("problem1.ipynb~"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        std::fs::read(&backups[0]).unwrap(),
        fixture("unanswered.ipynb")
    );
    let ids: std::collections::HashSet<_> = all.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), all.len());

    // a save that changes nothing and a full scan: nothing new
    let same = env.path("homes/a/ps1/problem1.ipynb");
    std::fs::write(&same, fixture("passing.ipynb")).unwrap();
    scanner.stop().await;
    let restarted = env.start(&["--scan-interval", "200ms"]).await;
    restarted.wait_scans(3).await;
    assert_eq!(env.events().await.len(), 7);
    assert_eq!(
        restarted
            .metric("learntrail_notebook_snapshot_events_total")
            .await,
        0.0
    );
    restarted.stop().await;
}
