//! Reading a Jupyter notebook (nbformat v4) and its nbgrader cell metadata (schema v3) into
//! progress counts: per notebook, how code cells ran and what they printed; per nbgrader
//! `grade_id`, whether the problem passed, failed, was not run, is unanswered or waits for a human,
//! with points. Pure functions over bytes: no I/O here.
//!
//! Grading follows nbgrader's own autograder (`nbgrader/utils.py` `determine_grade`), applied to
//! the notebook as the student last saved it, so the instructor sees what `nbgrader autograde`
//! would say before anything is submitted:
//! - a test cell (`grade`, not `solution`) with an `error` output or a `stderr` stream failed
//!   (0 points), unless the error is `NotImplementedError`: the answer it tests is still the
//!   release stub, so the problem is *unanswered*; an `execute_result` that reads as a number in
//!   `[0, points]` is partial credit; otherwise full points;
//! - a cell that has never run (no execution count, no outputs) is *not run*;
//! - an answer cell (`solution`) whose source is the release's (nbgrader `checksum`) or still holds
//!   the `YOUR CODE HERE` / `YOUR ANSWER HERE` stub is *unanswered*;
//! - a manually graded answer (`solution` and `grade`) or a task cell, once answered, needs manual
//!   grading.

use std::{collections::BTreeMap, fmt};

use md5::{Digest as _, Md5};
use serde::{
    Deserialize, Deserializer,
    de::{SeqAccess, Visitor},
};

/// nbgrader metadata schema versions this parser understands (older ones are upgraded by nbgrader
/// and read the same way here).
pub const NBGRADER_SCHEMA_MAX: u64 = 3;

/// What one problem (nbgrader `grade_id`) looks like right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passed,
    Failed,
    NotRun,
    NeedsManualGrading,
    Unanswered,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: Status,
    pub points: f64,
    pub max_points: f64,
}

/// The counts of one notebook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub cells: u32,
    /// Code cells that ran without an error output.
    pub code_ok: u32,
    /// Code cells that ran with an error output.
    pub code_errors: u32,
    /// Code cells never run.
    pub code_not_run: u32,
    /// `execute_result` and `display_data` outputs.
    pub display_outputs: u32,
    pub stream_outputs: u32,
    pub error_outputs: u32,
    /// Code cells with no source.
    pub empty_cells: u32,
    /// nbgrader `grade_id` → result, for every cell that has one.
    pub problems: BTreeMap<String, Problem>,
    /// From the notebook's metadata (`nbgrader.course_id` / `nbgrader.assignment_id`), if any.
    pub course: Option<String>,
    pub assignment: Option<String>,
}

/// Why a file is not a notebook this parser can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not valid notebook JSON: {0}")]
    Json(String),
    #[error("nbformat {0} is not supported (only 4)")]
    Version(u64),
    #[error("cell {cell}: nbgrader schema_version {version} is newer than {NBGRADER_SCHEMA_MAX}")]
    SchemaTooNew { cell: usize, version: u64 },
}

/// Parses notebook bytes into its [`Summary`].
pub fn parse(bytes: &[u8]) -> Result<Summary, ParseError> {
    let raw: RawNotebook =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
    if raw.nbformat != 4 {
        return Err(ParseError::Version(raw.nbformat));
    }
    let cells = raw
        .cells
        .ok_or_else(|| ParseError::Json("missing field `cells`".into()))?;
    let mut summary = Summary {
        cells: cells.len() as u32,
        course: raw
            .metadata
            .nbgrader
            .as_ref()
            .and_then(|m| m.course_id.clone()),
        assignment: raw.metadata.nbgrader.and_then(|m| m.assignment_id),
        ..Summary::default()
    };
    for (index, cell) in cells.iter().enumerate() {
        count_cell(&mut summary, cell);
        let Some(meta) = cell.metadata.nbgrader.as_ref().and_then(Grading::read) else {
            continue;
        };
        if meta.schema_version > NBGRADER_SCHEMA_MAX {
            return Err(ParseError::SchemaTooNew {
                cell: index,
                version: meta.schema_version,
            });
        }
        if let Some(problem) = grade(cell, &meta) {
            summary.problems.insert(meta.grade_id.clone(), problem);
        }
    }
    Ok(summary)
}

fn count_cell(summary: &mut Summary, cell: &RawCell) {
    if cell.cell_type != "code" {
        return;
    }
    if cell.source.0.trim().is_empty() {
        summary.empty_cells += 1;
    }
    let mut failed = false;
    for output in &cell.outputs {
        match output.output_type.as_str() {
            "execute_result" | "display_data" => summary.display_outputs += 1,
            "stream" => summary.stream_outputs += 1,
            "error" => {
                summary.error_outputs += 1;
                failed = true;
            }
            _ => {}
        }
    }
    if failed {
        summary.code_errors += 1;
    } else if cell.has_run() {
        summary.code_ok += 1;
    } else {
        summary.code_not_run += 1;
    }
}

/// The result of one nbgrader cell, or `None` for cells that are not problems (read-only ones).
fn grade(cell: &RawCell, meta: &Grading) -> Option<Problem> {
    let max_points = if meta.grade || meta.task {
        meta.points
    } else {
        0.0
    };
    let problem = |status, points| {
        Some(Problem {
            status,
            points,
            max_points,
        })
    };
    if meta.task {
        return problem(Status::NeedsManualGrading, 0.0);
    }
    if meta.solution {
        if is_unanswered(cell, meta) {
            return problem(Status::Unanswered, 0.0);
        }
        if meta.grade {
            return problem(Status::NeedsManualGrading, 0.0);
        }
        if cell.cell_type != "code" {
            return problem(Status::Passed, 0.0);
        }
        return problem(run_status(cell).unwrap_or(Status::Passed), 0.0);
    }
    if !meta.grade {
        return None;
    }
    if let Some(status) = run_status(cell) {
        return problem(status, 0.0);
    }
    match partial_credit(cell, max_points) {
        Some(points) => problem(Status::Passed, points),
        // nbgrader's autograde stops at such a cell: a person grades it
        None => problem(Status::NeedsManualGrading, 0.0),
    }
}

/// Not run, unanswered or failed, from a code cell's outputs; `None` when it ran cleanly.
fn run_status(cell: &RawCell) -> Option<Status> {
    if !cell.has_run() {
        return Some(Status::NotRun);
    }
    let mut status = None;
    for output in &cell.outputs {
        match output.output_type.as_str() {
            "error" if output.ename.as_deref() == Some("NotImplementedError") => {
                return Some(Status::Unanswered);
            }
            "error" => status = Some(Status::Failed),
            "stream" if output.name.as_deref() == Some("stderr") => status = Some(Status::Failed),
            _ => {}
        }
    }
    status
}

/// nbgrader's partial credit (`get_partial_grade`): the first `execute_result`'s plain text,
/// when it is a number above 0 and at most the cell's points; any other output (0 and below
/// included) earns the full points. `None` when the number is above the points, where nbgrader
/// raises an error instead of grading.
fn partial_credit(cell: &RawCell, max_points: f64) -> Option<f64> {
    let Some(points) = cell
        .outputs
        .iter()
        .find(|o| o.output_type == "execute_result")
        .and_then(|o| o.data.as_ref()?.text_plain.as_ref())
        .and_then(|text| text.0.trim().parse::<f64>().ok())
    else {
        return Some(max_points);
    };
    if points > max_points {
        None
    } else if points > 0.0 {
        Some(points)
    } else {
        Some(max_points)
    }
}

/// The release stubs nbgrader puts where a solution was.
const STUBS: [&str; 3] = [
    "YOUR CODE HERE",
    "YOUR ANSWER HERE",
    "raise NotImplementedError()",
];

/// An answer cell still as released: by nbgrader's checksum when the cell has one (as
/// `nbgrader autograde` decides: an answer that kept the stub's comment above its code is an
/// answer), by the stub text otherwise.
fn is_unanswered(cell: &RawCell, meta: &Grading) -> bool {
    match &meta.checksum {
        Some(released) => *released == checksum(cell, meta),
        None => STUBS.iter().any(|stub| cell.source.0.contains(stub)),
    }
}

/// nbgrader's `compute_checksum`: md5 over source, cell type, the role flags and the grade id
/// (and the points of a grade cell), as Python writes them (`True`, `2.0`).
fn checksum(cell: &RawCell, meta: &Grading) -> String {
    let flag = |b: bool| if b { "True" } else { "False" };
    let locked = !meta.solution && (meta.grade || meta.locked);
    let mut md5 = Md5::new();
    md5.update(cell.source.0.as_bytes());
    md5.update(cell.cell_type.as_bytes());
    md5.update(flag(meta.grade));
    md5.update(flag(meta.solution));
    md5.update(flag(locked));
    md5.update(meta.grade_id.as_bytes());
    if meta.grade {
        md5.update(python_float(meta.points).as_bytes());
    }
    hex::encode(md5.finalize())
}

/// Python's `str(float(x))` for the values points take (`2.0`, `0.5`, `1e-05` aside).
fn python_float(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// The nbgrader cell metadata this parser uses, read leniently (older schema versions, points
/// written as strings).
#[derive(Debug)]
struct Grading {
    schema_version: u64,
    grade: bool,
    solution: bool,
    locked: bool,
    task: bool,
    grade_id: String,
    points: f64,
    checksum: Option<String>,
}

impl Grading {
    fn read(value: &serde_json::Value) -> Option<Self> {
        let flag = |key: &str| value.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        let grade_id = value.get("grade_id")?.as_str()?.to_string();
        if grade_id.is_empty() {
            return None;
        }
        let points = match value.get("points") {
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(0.0),
            _ => 0.0,
        };
        Some(Self {
            schema_version: value
                .get("schema_version")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
            grade: flag("grade"),
            solution: flag("solution"),
            locked: flag("locked"),
            task: flag("task"),
            grade_id,
            points: points.max(0.0),
            checksum: value
                .get("checksum")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }
}

// ---- the parts of nbformat v4 read here (unknown fields are skipped without being kept) ----

#[derive(Deserialize)]
struct RawNotebook {
    nbformat: u64,
    /// Absent from older formats (v3 has `worksheets`): the version is checked first.
    #[serde(default)]
    cells: Option<Vec<RawCell>>,
    #[serde(default)]
    metadata: NotebookMeta,
}

#[derive(Deserialize, Default)]
struct NotebookMeta {
    #[serde(default)]
    nbgrader: Option<NotebookGrading>,
}

#[derive(Deserialize)]
struct NotebookGrading {
    #[serde(default)]
    course_id: Option<String>,
    #[serde(default)]
    assignment_id: Option<String>,
}

#[derive(Deserialize)]
struct RawCell {
    cell_type: String,
    #[serde(default)]
    source: MultiLine,
    #[serde(default)]
    metadata: CellMeta,
    #[serde(default)]
    outputs: Vec<RawOutput>,
    #[serde(default)]
    execution_count: Option<i64>,
}

impl RawCell {
    fn has_run(&self) -> bool {
        self.execution_count.is_some() || !self.outputs.is_empty()
    }
}

#[derive(Deserialize, Default)]
struct CellMeta {
    #[serde(default)]
    nbgrader: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawOutput {
    output_type: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ename: Option<String>,
    #[serde(default)]
    data: Option<MimeBundle>,
}

#[derive(Deserialize)]
struct MimeBundle {
    #[serde(rename = "text/plain", default)]
    text_plain: Option<MultiLine>,
}

/// nbformat's multiline string: a string, or an array of strings to concatenate.
#[derive(Default, Debug)]
struct MultiLine(String);

impl<'de> Deserialize<'de> for MultiLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MultiLineVisitor;
        impl<'de> Visitor<'de> for MultiLineVisitor {
            type Value = MultiLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MultiLine, E> {
                Ok(MultiLine(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MultiLine, A::Error> {
                let mut text = String::new();
                while let Some(part) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    text.push_str(&part);
                }
                Ok(MultiLine(text))
            }
        }
        deserializer.deserialize_any(MultiLineVisitor)
    }
}

#[cfg(test)]
mod tests;
