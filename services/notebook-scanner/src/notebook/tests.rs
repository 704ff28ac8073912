//! The parser on notebooks a real ipykernel executed (tests/fixtures/make.py writes them).

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
    };
}

fn problems(bytes: &[u8]) -> BTreeMap<String, (Status, f64, f64)> {
    parse(bytes)
        .unwrap()
        .problems
        .into_iter()
        .map(|(id, p)| (id, (p.status, p.points, p.max_points)))
        .collect()
}

fn status(bytes: &[u8], grade_id: &str) -> (Status, f64, f64) {
    problems(bytes)[grade_id]
}

#[test]
fn a_passing_notebook_scores_its_tests_and_waits_for_manual_grading() {
    let nb = fixture!("passing.ipynb");
    let p = problems(nb);
    assert_eq!(p["squares"], (Status::Passed, 0.0, 0.0));
    assert_eq!(p["correct_squares"], (Status::Passed, 2.0, 2.0));
    // the cell printed 0.5: nbgrader's partial credit
    assert_eq!(p["partial_squares"], (Status::Passed, 0.5, 1.0));
    assert_eq!(p["explain"], (Status::NeedsManualGrading, 0.0, 3.0));
    assert_eq!(p["plot_task"], (Status::NeedsManualGrading, 0.0, 2.0));
    assert!(
        !p.contains_key("jupyter"),
        "read-only cells are not problems"
    );
    let s = parse(nb).unwrap();
    assert_eq!(s.cells, 8);
    assert_eq!(
        (s.code_ok, s.code_errors, s.code_not_run, s.empty_cells),
        (4, 0, 1, 1)
    );
    assert_eq!(
        (s.display_outputs, s.stream_outputs, s.error_outputs),
        (2, 1, 0)
    );
}

/// The passing notebook with `grade_id`'s source set to `source` (its metadata, release checksum
/// included, unchanged; the checksum left out with `checksum: false`).
fn edited(grade_id: &str, source: &str, checksum: bool) -> Vec<u8> {
    let mut nb: serde_json::Value = serde_json::from_slice(fixture!("passing.ipynb")).unwrap();
    for cell in nb["cells"].as_array_mut().unwrap() {
        if cell["metadata"]["nbgrader"]["grade_id"] == grade_id {
            cell["source"] = source.into();
            if !checksum {
                cell["metadata"]["nbgrader"]
                    .as_object_mut()
                    .unwrap()
                    .remove("checksum");
            }
        }
    }
    serde_json::to_vec(&nb).unwrap()
}

#[test]
fn an_answer_that_keeps_the_stub_comment_is_an_answer() {
    // students keep the release's comment above their code: the checksum says it changed
    let answered = edited(
        "squares",
        "def squares(n):\n    # YOUR CODE HERE\n    return [i * i for i in range(1, n + 1)]\n",
        true,
    );
    assert_eq!(status(&answered, "squares"), (Status::Passed, 0.0, 0.0));
    let explained = edited("explain", "YOUR ANSWER HERE: they grow fast.", true);
    assert_eq!(
        status(&explained, "explain"),
        (Status::NeedsManualGrading, 0.0, 3.0)
    );
    // without a checksum (a notebook nbgrader did not release), the stub text decides
    let stub = edited("explain", "YOUR ANSWER HERE", false);
    assert_eq!(status(&stub, "explain"), (Status::Unanswered, 0.0, 3.0));
}

#[test]
fn an_error_output_fails_the_test_with_zero_points() {
    let nb = fixture!("failing.ipynb");
    assert_eq!(status(nb, "correct_squares"), (Status::Failed, 0.0, 2.0));
    assert_eq!(status(nb, "squares"), (Status::Passed, 0.0, 0.0));
    let s = parse(nb).unwrap();
    assert_eq!((s.error_outputs, s.code_errors), (1, 1));
}

#[test]
fn release_stubs_and_unchanged_checksums_are_unanswered() {
    let nb = fixture!("unanswered.ipynb");
    let p = problems(nb);
    assert_eq!(p["squares"], (Status::Unanswered, 0.0, 0.0));
    // the tests ran into the stub's NotImplementedError: unanswered, not failed
    assert_eq!(p["correct_squares"], (Status::Unanswered, 0.0, 2.0));
    assert_eq!(p["partial_squares"], (Status::Unanswered, 0.0, 1.0));
    assert_eq!(p["explain"], (Status::Unanswered, 0.0, 3.0));
}

#[test]
fn cells_never_run_are_not_run() {
    let nb = fixture!("not_run.ipynb");
    let p = problems(nb);
    assert_eq!(p["correct_squares"], (Status::Passed, 2.0, 2.0));
    assert_eq!(p["partial_squares"], (Status::NotRun, 0.0, 1.0));
    let untouched = problems(fixture!("untouched.ipynb"));
    assert_eq!(untouched["squares"].0, Status::NotRun);
    assert_eq!(untouched["correct_squares"], (Status::NotRun, 0.0, 2.0));
    assert_eq!(parse(fixture!("untouched.ipynb")).unwrap().code_not_run, 5);
}

#[test]
fn nbformat_4_4_without_cell_ids_reads_the_same() {
    assert_eq!(
        problems(fixture!("v4_4.ipynb")),
        problems(fixture!("passing.ipynb"))
    );
}

#[test]
fn checksums_match_nbgrader() {
    // make.py computed these with nbgrader's algorithm; an unedited cell must match its own.
    let raw: RawNotebook = serde_json::from_slice(fixture!("untouched.ipynb")).unwrap();
    let cells = raw.cells.unwrap();
    let explain = &cells[4];
    let meta = Grading::read(explain.metadata.nbgrader.as_ref().unwrap()).unwrap();
    assert_eq!(Some(checksum(explain, &meta)), meta.checksum);
    let test = &cells[2];
    let meta = Grading::read(test.metadata.nbgrader.as_ref().unwrap()).unwrap();
    assert_eq!(Some(checksum(test, &meta)), meta.checksum);
    assert_eq!(python_float(2.0), "2.0");
    assert_eq!(python_float(0.5), "0.5");
}

#[test]
fn malformed_notebooks_are_errors_not_panics() {
    assert!(matches!(
        parse(fixture!("truncated.ipynb")),
        Err(ParseError::Json(_))
    ));
    assert!(matches!(parse(b""), Err(ParseError::Json(_))));
    assert!(matches!(parse(b"[1, 2]"), Err(ParseError::Json(_))));
    assert_eq!(
        parse(br#"{"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [], "cells": []}"#),
        Err(ParseError::Version(3))
    );
    // a real v3 notebook: its cells are in worksheets
    let v3 = br#"{"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"},
        "worksheets": [{"cells": [{"cell_type": "code", "input": "1 + 1", "language": "python",
                                   "outputs": [], "collapsed": false, "metadata": {}}],
                        "metadata": {}}]}"#;
    assert_eq!(parse(v3), Err(ParseError::Version(3)));
    assert_eq!(
        parse(br#"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}"#),
        Err(ParseError::Json("missing field `cells`".into()))
    );
    let too_new = br#"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "a", "source": "", "outputs": [], "execution_count": null,
         "metadata": {"nbgrader": {"schema_version": 10, "grade": true, "solution": false,
                      "locked": false, "grade_id": "x", "points": 1}}}]}"#;
    assert_eq!(
        parse(too_new),
        Err(ParseError::SchemaTooNew {
            cell: 0,
            version: 10
        })
    );
}

#[test]
fn stderr_fails_a_test_and_metadata_names_the_course() {
    let nb = br#"{"nbformat": 4, "nbformat_minor": 4,
      "metadata": {"nbgrader": {"course_id": "cs101", "assignment_id": "ps2"}},
      "cells": [{"cell_type": "code", "source": ["check()"], "execution_count": 3,
        "metadata": {"nbgrader": {"schema_version": 3, "grade": true, "solution": false,
                     "locked": true, "grade_id": "t1", "points": "1.5"}},
        "outputs": [{"output_type": "stream", "name": "stderr", "text": ["warning\n"]}]}]}"#;
    let s = parse(nb).unwrap();
    assert_eq!(s.course.as_deref(), Some("cs101"));
    assert_eq!(s.assignment.as_deref(), Some("ps2"));
    assert_eq!(
        s.problems["t1"],
        Problem {
            status: Status::Failed,
            points: 0.0,
            max_points: 1.5
        }
    );
}

/// A notebook of one autograder test cell worth 2 points whose outputs are `results` (each an
/// `execute_result`'s plain text).
fn test_cell_printing(results: &[&str]) -> Vec<u8> {
    let outputs: Vec<serde_json::Value> = results
        .iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::json!({"output_type": "execute_result", "execution_count": i + 1,
                               "data": {"text/plain": text}, "metadata": {}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": "t", "source": "check()", "execution_count": 1,
                   "outputs": outputs,
                   "metadata": {"nbgrader": {"schema_version": 3, "grade": true, "solution": false,
                                             "locked": true, "grade_id": "t", "points": 2}}}]
    }))
    .unwrap()
}

/// As nbgrader's `get_partial_grade` has it.
#[test]
fn partial_credit_is_nbgraders() {
    let t = |results: &[&str]| status(&test_cell_printing(results), "t");
    assert_eq!(t(&["1.5"]), (Status::Passed, 1.5, 2.0));
    assert_eq!(t(&[" 2 "]), (Status::Passed, 2.0, 2.0));
    // 0 and below, or not a number: full points
    assert_eq!(t(&["0"]), (Status::Passed, 2.0, 2.0));
    assert_eq!(t(&["-1"]), (Status::Passed, 2.0, 2.0));
    assert_eq!(t(&["'done'"]), (Status::Passed, 2.0, 2.0));
    assert_eq!(t(&[]), (Status::Passed, 2.0, 2.0));
    // only the first result counts
    assert_eq!(t(&["'done'", "0.5"]), (Status::Passed, 2.0, 2.0));
    // above the cell's points nbgrader stops with an error: a person grades it
    assert_eq!(t(&["3"]), (Status::NeedsManualGrading, 0.0, 2.0));
}
