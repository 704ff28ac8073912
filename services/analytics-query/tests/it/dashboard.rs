//! The dashboard in a real headless Chromium ([`browser`]) against a real stack (nats-server,
//! redis-server, analytics-query in-process) seeded with events of every source: the cohort
//! table's cells and the learner page's chart points equal the seeded numbers, names reach
//! instructors only, a student sees "not allowed" on someone else's page, a passed cell shows
//! up by itself, and the cohort page of 500 learners × 30 problems paints in time (target 1 s).
//! Screenshots go to target/screenshots/.

mod browser;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use browser::Browser;
use learntrail_proto::{
    Event, Payload,
    v1::{LmsEventType, NotebookSnapshot, ProblemResult},
};
use learntrail_runtime::auth::Role;
use learntrail_testkit::{NatsServer, RedisServer};
use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "dashboard-test-pseudonym-key";
const PASSED: i32 = 1;
const FAILED: i32 = 2;
const NOT_RUN: i32 = 3;
const MANUAL: i32 = 4;
const UNANSWERED: i32 = 5;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots")
}

/// analytics-query with a roster: alice by an `actor` cell, bob and carol by the pseudonym key.
async fn spawn_dashboard() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let roster = dir.path().join("users.csv");
    std::fs::write(
        &roster,
        "uid,name,email,actor\nalice,Alice Example,alice@example.org,a1\n\
         bob,Bob Builder,bob@example.org,\ncarol,Carol Secret,carol@example.org,\n",
    )
    .unwrap();
    let redis = RedisServer::start();
    let url = redis.url();
    let roster = roster.to_str().unwrap().to_string();
    let app = spawn_with(
        NatsServer::start(),
        url,
        Some(redis),
        &["--roster-csv", &roster, "--pseudonym-key", KEY],
    )
    .await;
    (app, dir)
}

fn notebook(id: &str, actor: &str, ms: i64, course: &str, problems: &[(String, i32)]) -> Event {
    let mut event = snapshot(id, actor, ms, 1, &[]);
    event.context.as_mut().unwrap().course = course.into();
    let Some(Payload::NotebookSnapshot(NotebookSnapshot {
        course: c,
        problems: p,
        ..
    })) = event.payload.as_mut()
    else {
        unreachable!()
    };
    *c = course.into();
    *p = problems
        .iter()
        .map(|(g, status)| {
            let points = if *status == PASSED { 1.0 } else { 0.0 };
            let result = ProblemResult {
                status: *status,
                points,
                max_points: 1.0,
            };
            (g.clone(), result)
        })
        .collect();
    event
}

fn problems(statuses: &[i32]) -> Vec<(String, i32)> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("q{}", i + 1), *s))
        .collect()
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

const COHORT_ROWS: &str = "[...document.querySelectorAll('#cohort-table tbody tr')].map(tr => ({\
    learner: tr.dataset.learner, \
    name: tr.querySelector('th').textContent, \
    completion: Number(tr.querySelector('.completion').dataset.value), \
    last: Number(tr.querySelector('.last').dataset.value), \
    runs: Number(tr.querySelector('.runs').dataset.value), \
    failure: Number(tr.querySelector('.failure').dataset.value), \
    cells: [...tr.querySelectorAll('td.cell')].map(td => [td.dataset.problem, td.dataset.status, td.textContent])}))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_and_learner_pages_show_the_seeded_numbers_to_whom_they_may() {
    let (app, _dir) = spawn_dashboard().await;
    let bob = learntrail_proto::pseudonym::pseudonym(KEY, "bob");
    let carol = learntrail_proto::pseudonym::pseudonym(KEY, "carol");
    let d2 = this_hour() - 24 * 3_600_000;
    let d1 = d2 - 24 * 3_600_000;
    let min = 60_000;
    let events = vec![
        ruby("r1", "a1", d1, 1, "NameError", 5),
        ruby("r2", "a1", d1 + min, 1, "NoMethodError", 5),
        ruby("r3", "a1", d2, 0, "", 5),
        ruby("r4", "a1", d2 + min, 1, "NameError", 5),
        notebook(
            "s1",
            "a1",
            d2 + 2 * min,
            "ruby-101",
            &problems(&[PASSED, FAILED, NOT_RUN, MANUAL, UNANSWERED]),
        ),
        lab("l1", "a1", d2 + 3 * min, "spinner", "click"),
        lab("l2", "a1", d2 + 4 * min, "spinner", "click"),
        lab("l3", "a1", d2 + 5 * min, "spinner", "drag"),
        video("v1", "a1", d2 + 6 * min, LmsEventType::VideoPlay, 0.0),
        video(
            "v2",
            "a1",
            d2 + 6 * min + 30_000,
            LmsEventType::VideoPause,
            30.0,
        ),
        assessment("q1", "a1", d2 + 7 * min, 8.0),
        assessment("q2", "a1", d2 + 8 * min, 6.0),
        reading("e1", "a1", d2 + 9 * min, 2.5, 100.0),
        ruby("b1", &bob, d2, 0, "", 5),
        notebook(
            "s2",
            &bob,
            d2 + min,
            "ruby-101",
            &problems(&[PASSED, PASSED]),
        ),
        notebook("s3", &carol, d2 + min, "ruby-101", &problems(&[UNANSWERED])),
    ];
    app.publish(&events).await;
    app.caught_up().await;
    let a1_last = d2 + 9 * min;

    let mut browser = Browser::launch().await;
    let instructor = token("teacher", Role::Instructor);
    browser
        .navigate(&format!("{}/?course=ruby-101#token={instructor}", app.api))
        .await;
    browser
        .wait_for(
            "document.body.dataset.painted === 'cohort'",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        browser.eval("location.hash").await,
        "",
        "the token leaves the URL"
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('learntrail.token')")
            .await,
        instructor.as_str()
    );
    let layout = browser
        .eval("[document.querySelector('th[data-problem=\"hw1/q5\"]').getBoundingClientRect().left, \
                document.querySelector('tr[data-learner=a1] td[data-problem=\"hw1/q5\"]').getBoundingClientRect().left, \
                getComputedStyle(document.getElementById('token-form')).display]")
        .await;
    assert_eq!(
        layout[0], layout[1],
        "each problem's cells sit under its heading"
    );
    assert_eq!(layout[2], "none", "no token form once a token is kept");
    let rows = browser.eval(COHORT_ROWS).await;
    let by_learner = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["learner"] == id)
            .unwrap_or_else(|| panic!("no row of {id}: {rows}"))
            .clone()
    };
    let a1 = by_learner("a1");
    assert_eq!(a1["name"], "Alice Example");
    assert_eq!(
        a1["cells"],
        json!([
            ["hw1/q1", "passed", "✓"],
            ["hw1/q2", "failed", "✗"],
            ["hw1/q3", "not_run", "○"],
            ["hw1/q4", "manual", "?"],
            ["hw1/q5", "unanswered", "–"]
        ])
    );
    assert_eq!(a1["completion"], 0.2);
    assert_eq!(a1["runs"], 4.0);
    assert_eq!(a1["failure"], 0.75);
    assert_eq!(a1["last"], a1_last as f64);
    let b = by_learner(&bob);
    assert_eq!(
        b["name"], "Bob Builder",
        "bob's uid matched by PSEUDONYM_KEY"
    );
    let statuses: Vec<&Value> = b["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c[1])
        .collect();
    assert_eq!(
        statuses,
        ["passed", "passed", "none", "none", "none"]
            .map(|s| json!(s))
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (b["completion"].as_f64(), b["runs"].as_f64()),
        (Some(0.4), Some(1.0))
    );
    assert_eq!(by_learner(&carol)["name"], "Carol Secret");

    // sorting by completion, descending on the second click
    browser
        .eval("document.querySelector('button[data-sort=completion]').click(); document.querySelector('button[data-sort=completion]').click()")
        .await;
    let order = browser
        .eval("[...document.querySelectorAll('#cohort-table tbody tr')].map(tr => tr.dataset.learner)")
        .await;
    assert_eq!(order, json!([bob, "a1", carol]));
    browser
        .screenshot(&screenshots().join("cohort.png"), true)
        .await;

    // live: carol passes q1; the open page shows it without a reload
    let started = Instant::now();
    app.publish(&[notebook(
        "s4",
        &carol,
        d2 + 20 * min,
        "ruby-101",
        &problems(&[PASSED]),
    )])
    .await;
    browser
        .wait_for(
            &format!("document.querySelector('tr[data-learner=\"{carol}\"] td[data-problem=\"hw1/q1\"]').dataset.status === 'passed'"),
            Duration::from_secs(15),
        )
        .await;
    let live = started.elapsed();
    println!("a passed cell reached the open cohort page in {live:?}");
    assert!(live < Duration::from_secs(10), "{live:?}");

    // the learner page
    browser.navigate(&format!("{}/learners/a1", app.api)).await;
    browser
        .wait_for(
            "document.body.dataset.painted === 'learner'",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('learner-title').textContent")
            .await,
        "Alice Example (a1)"
    );
    // the chart's own data points, read back from Chart.js: (day, class, count) per bar segment
    let points = browser
        .eval("(() => { const c = Chart.getChart(document.querySelector('#errors-chart canvas')); \
               return c.config.type === 'bar' && c.options.scales.y.stacked \
                 ? c.data.labels.flatMap((d, i) => c.data.datasets.filter(s => s.data[i] > 0).map(s => [d, s.label, s.data[i]])) \
                 : 'not a stacked bar chart'; })()")
        .await;
    let expected = json!([
        [day(d1), "NameError", 1],
        [day(d1), "NoMethodError", 1],
        [day(d2), "NameError", 1]
    ]);
    assert_eq!(points, expected, "the stacked bars");
    let table = browser
        .eval("[...document.querySelectorAll('#errors-data tr[data-day]')].map(r => [r.dataset.day, r.dataset.class, Number(r.dataset.count)])")
        .await;
    assert_eq!(table, expected, "the chart's data table");
    let top = browser
        .eval("[...document.querySelectorAll('#top-errors tbody tr')].map(r => [r.dataset.class, Number(r.dataset.count), r.querySelector('.where').textContent])")
        .await;
    assert_eq!(
        top,
        json!([
            ["NameError", 2, "main.rb:7"],
            ["NoMethodError", 1, "main.rb:7"]
        ])
    );
    let page = browser
        .eval("({\
            assignment: [...document.querySelectorAll('#assignments tbody tr')].map(r => [r.dataset.assignment, Number(r.dataset.passed), Number(r.dataset.known)]),\
            lab: [...document.querySelectorAll('#lab tbody tr')].map(r => [r.dataset.experiment, Number(r.dataset.total)]),\
            played: Number(document.getElementById('videos').dataset.played),\
            seconds: Number(document.getElementById('videos').dataset.seconds),\
            assessments: [...document.querySelectorAll('#assessments tbody tr')].map(r => [r.dataset.assessment, Number(r.dataset.best), Number(r.dataset.max), Number(r.dataset.attempts)]),\
            energy: [...document.querySelectorAll('#energy tbody tr')].map(r => [r.dataset.meter, Number(r.dataset.kw)]),\
            timeline: [...document.querySelectorAll('#timeline li')].map(li => li.dataset.id)})")
        .await;
    assert_eq!(page["assignment"], json!([["hw1", 1, 5]]));
    assert_eq!(page["lab"], json!([["spinner", 3]]));
    assert_eq!(
        (page["played"].as_f64(), page["seconds"].as_f64()),
        (Some(1.0), Some(30.0))
    );
    assert_eq!(page["assessments"], json!([["quiz1", 8, 10, 2]]));
    assert_eq!(page["energy"], json!([["cloud-1", 2.5]]));
    assert_eq!(
        page["timeline"],
        json!([
            "e1", "q2", "q1", "v2", "v1", "l3", "l2", "l1", "s1", "r4", "r3", "r2", "r1"
        ]),
        "newest first"
    );
    // position in the cohort: Ruby runs 4 against bob's 1 and carol's 0
    let compare = browser
        .eval("(async () => { const s = document.getElementById('compare-metric'); s.value = 'ruby_runs'; s.dispatchEvent(new Event('change', {bubbles: true})); \
               for (let i = 0; i < 400 && !(document.getElementById('compare-text') && document.getElementById('compare-text').textContent.startsWith('ruby_runs')); i++) await new Promise(r => setTimeout(r, 25)); \
               const t = document.getElementById('compare-text'); \
               const c = Chart.getChart(document.querySelector('#compare-chart canvas')); \
               const rows = [...document.querySelectorAll('#compare-data tr[data-decile]')]; \
               return [Number(t.dataset.value), Number(t.dataset.size), c.data.datasets[1].data.map(p => p.x)[0], \
                       c.data.datasets[0].data.map(p => p.x), \
                       rows.map(tr => [Number(tr.dataset.decile), Number(tr.dataset.value)]), \
                       Number(document.querySelector('#compare-data tr[data-learner]').dataset.learner)]; })()")
        .await;
    assert_eq!(compare[0], 4.0);
    assert_eq!(compare[1], 3.0);
    assert_eq!(compare[2], 4.0, "the learner's marker");
    let deciles = compare[3].as_array().unwrap();
    assert_eq!(
        (deciles.first(), deciles.last()),
        (Some(&json!(0)), Some(&json!(4)))
    );
    // the chart's numbers are in a table beside it: p0 … p100 and the learner
    let table_rows: Vec<Value> = deciles
        .iter()
        .enumerate()
        .map(|(i, d)| json!([i * 10, d]))
        .collect();
    assert_eq!(compare[4], json!(table_rows), "the comparison's data table");
    assert_eq!(deciles.len(), 11, "p0 to p100");
    assert_eq!(compare[5], 4.0, "the learner's row");
    assert_eq!(
        browser.eval("window.cspViolations").await,
        json!([]),
        "the vendored chart library runs under the strict policy"
    );
    browser
        .screenshot(&screenshots().join("learner.png"), true)
        .await;

    // a student: pseudonyms only, their own page only
    let student = token(&carol, Role::Student);
    browser.navigate("about:blank").await;
    browser
        .navigate(&format!("{}/learners/a1#token={student}", app.api))
        .await;
    browser
        .wait_for(
            "document.body.dataset.error === '403'",
            Duration::from_secs(30),
        )
        .await;
    let seen = browser
        .eval("[document.getElementById('message').textContent, document.getElementById('learner').hidden, document.body.innerText]")
        .await;
    assert!(
        seen[0].as_str().unwrap().starts_with("Not allowed"),
        "{seen}"
    );
    assert_eq!(seen[1], true);
    assert!(!seen[2].as_str().unwrap().contains("Alice"), "{seen}");
    browser
        .screenshot(&screenshots().join("not-allowed.png"), false)
        .await;
    browser.navigate(&format!("{}/", app.api)).await;
    browser
        .wait_for(
            "document.body.dataset.painted === 'learner'",
            Duration::from_secs(30),
        )
        .await;
    let own = browser
        .eval("[location.pathname, document.getElementById('learner-title').textContent, document.body.innerText]")
        .await;
    assert_eq!(
        own[0],
        format!("/learners/{carol}"),
        "a student's / is their own page"
    );
    assert_eq!(
        own[1],
        carol.as_str(),
        "a student sees their pseudonym, not a name"
    );
    let text = own[2].as_str().unwrap();
    assert!(!text.contains("Carol") && !text.contains("Alice"), "{text}");
    // carol's own value is 0, which the API's JSON leaves out: the page still says 0
    let zero = browser
        .eval("(async () => { const s = document.getElementById('compare-metric'); s.value = 'ruby_runs'; s.dispatchEvent(new Event('change', {bubbles: true})); \
               for (let i = 0; i < 400 && !(document.getElementById('compare-text') && document.getElementById('compare-text').textContent.startsWith('ruby_runs')); i++) await new Promise(r => setTimeout(r, 25)); \
               const t = document.getElementById('compare-text'); \
               const c = Chart.getChart(document.querySelector('#compare-chart canvas')); \
               return [t.textContent, t.dataset.value, c.data.datasets[1].data.map(p => p.x)[0], \
                       document.querySelector('#compare-data tr[data-learner]').dataset.learner]; })()")
        .await;
    assert!(
        zero[0].as_str().unwrap().starts_with("ruby_runs: 0 "),
        "{zero}"
    );
    assert!(!zero.to_string().contains("NaN"), "{zero}");
    assert_eq!(
        (&zero[1], &zero[2], &zero[3]),
        (&json!("0"), &json!(0), &json!("0"))
    );
    let (status, _) = app
        .get(
            "/api/v1/dashboard/cohorts/ruby-101",
            Some(&format!("Bearer {student}")),
        )
        .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn the_timeline_pages_back_to_the_oldest_event() {
    let (app, _dir) = spawn_dashboard().await;
    let h = this_hour();
    // 70 lab actions, one a second: the newest 50 on the first page, 20 behind "Older events"
    let events: Vec<Event> = (0..70)
        .map(|i| {
            lab(
                &format!("p{i:02}"),
                "pager",
                h - 100_000 + i * 1_000,
                "spinner",
                "click",
            )
        })
        .collect();
    app.publish(&events).await;
    app.caught_up().await;
    let mut browser = Browser::launch().await;
    let instructor = token("teacher", Role::Instructor);
    browser
        .navigate(&format!("{}/learners/pager#token={instructor}", app.api))
        .await;
    browser
        .wait_for(
            "document.body.dataset.painted === 'learner'",
            Duration::from_secs(30),
        )
        .await;
    let listed = "[...document.querySelectorAll('#timeline li')].map(li => li.dataset.id)";
    let first = browser.eval(listed).await;
    assert_eq!(first.as_array().unwrap().len(), 50, "{first}");
    assert_eq!(first[0], "p69", "newest first");
    assert_eq!(
        browser
            .eval("document.getElementById('timeline-older').hidden")
            .await,
        false
    );
    browser
        .eval("document.getElementById('timeline-older').click()")
        .await;
    browser
        .wait_for(
            "document.querySelectorAll('#timeline li').length === 70",
            Duration::from_secs(30),
        )
        .await;
    let all: Vec<String> = browser
        .eval(listed)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..70).rev().map(|i| format!("p{i:02}")).collect();
    assert_eq!(all, expected, "every event once, newest first");
    assert_eq!(
        browser
            .eval("document.getElementById('timeline-older').hidden")
            .await,
        true,
        "nothing older is left"
    );
    app.stop().await;
}

#[tokio::test]
async fn pages_carry_a_strict_csp_cache_headers_and_no_inline_script() {
    let (app, _dir) = spawn_dashboard().await;
    for (path, cache) in [
        ("/", "no-cache"),
        ("/learners/a1", "no-cache"),
        ("/dashboard/cohort.js", "public, max-age=3600"),
        ("/dashboard/style.css", "public, max-age=3600"),
        ("/dashboard/vendor/chart.umd.min.js", "public, max-age=3600"),
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(header("cache-control").as_deref(), Some(cache), "{path}");
        let csp = header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        if path.starts_with("/learners") || path == "/" {
            let html = response.text().await.unwrap();
            assert!(html.matches("<script").count() >= 2, "{html}");
            assert_eq!(
                html.matches("<script").count(),
                html.matches("<script src=").count(),
                "every script is a file"
            );
            assert!(!html.contains("style="), "no inline style");
        }
    }
    for path in ["/dashboard/nope.js", "/dashboard/cohort.html"] {
        let response = app
            .http
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let (status, body) = app
        .get(
            "/api/v1/dashboard/courses",
            Some(&format!("Bearer {}", instructor_of(&["ruby-101"]))),
        )
        .await;
    assert_eq!(
        (status, body["courses"].clone()),
        (200, json!(["ruby-101"]))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cohort_page_of_500_learners_by_30_problems_paints_in_time() {
    let (app, _dir) = spawn_dashboard().await;
    let h = this_hour();
    let cycle = [PASSED, FAILED, NOT_RUN, MANUAL, UNANSWERED];
    let events: Vec<Event> = (0..500)
        .map(|i| {
            let statuses: Vec<i32> = (0..30).map(|j| cycle[(i + j) % 5]).collect();
            notebook(
                &format!("big{i}"),
                &format!("learner{i:03}"),
                h + i as i64,
                "big-course",
                &problems(&statuses),
            )
        })
        .collect();
    app.publish(&events).await;
    app.caught_up().await;
    let mut browser = Browser::launch().await;
    // a browser already running, the page not in its cache
    browser
        .navigate(&format!("{}/dashboard/style.css", app.api))
        .await;
    browser
        .wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    let instructor = token("teacher", Role::Instructor);
    browser
        .navigate(&format!(
            "{}/?course=big-course#token={instructor}",
            app.api
        ))
        .await;
    browser
        .wait_for(
            "document.body.dataset.painted === 'cohort'",
            Duration::from_secs(60),
        )
        .await;
    let figures = browser
        .eval("({table: performance.getEntriesByName('cohort-table')[0].startTime, \
                fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime, \
                rows: document.querySelectorAll('#cohort-table tbody tr').length, \
                cells: document.querySelectorAll('#cohort-table td.cell').length, \
                passed: document.querySelectorAll('#cohort-table td.cell[data-status=passed]').length, \
                first: ['hw1/q1', 'hw1/q2', 'hw1/q3'].map(p => document.querySelector(`tr[data-learner=learner007] td[data-problem=\"${p}\"]`).dataset.status), \
                resources: performance.getEntriesByType('resource').map(r => [r.name.split('/').pop(), Math.round(r.startTime), Math.round(r.duration)])})")
        .await;
    println!("cohort page, 500 learners × 30 problems: {figures}");
    assert_eq!(figures["rows"], 500);
    assert_eq!(figures["cells"], 15_000);
    assert_eq!(figures["passed"], 3_000, "one in five cells passed");
    // learner007's q1..q3: cycle[(7 + j) % 5]
    assert_eq!(figures["first"], json!(["not_run", "manual", "unanswered"]));
    let painted = figures["table"].as_f64().unwrap();
    browser
        .screenshot(&screenshots().join("cohort-500.png"), false)
        .await;
    // The target is 1 s: 548 ms alone and 838 ms while the rest of this suite runs on the 2
    // cores (debug build; the JSON answer is most of it). The bound here is 3 s: it catches a
    // render or a read that grows out of proportion without failing on a machine busy with builds.
    println!("first paint of the 500 × 30 cohort table: {painted:.0} ms (target 1 s)");
    assert!(
        painted <= 3_000.0,
        "the table painted {painted:.0} ms after navigation"
    );
    app.stop().await;
}
