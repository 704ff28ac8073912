//! # fake-eagle
//!
//! A test double of Rainforest Eagle meters that speaks their real wire protocols
//! (shared/PROTOCOLS.md §1) over real HTTP, for many meters on one port:
//! - the cloud relay (`POST /cgi-bin/post_manager` with headers `Cloud-ID`, `User`, `Password`;
//!   `get_instantaneous_demand`, `get_current_summation`, `get_network_info`), answering XML,
//!   or JSON when the command asks `<Format>JSON</Format>` (unless the meter plays old firmware);
//! - the Eagle-100 local `post_manager` (the same commands, HTTP Basic `cloud_id:install_code`);
//! - the Eagle-200 local API (the same URL and Basic auth; `device_list`, `device_query`).
//!
//! The meter is told apart by its `Cloud-ID` header or its Basic-auth user (in any case). Each
//! meter has a mode — `ok`, `bad_credentials` (401 whatever is sent), `slow` (answers after
//! `--slow`), `down` (503 from the relay; a local Eagle drops the connection), `malformed`
//! (garbage), `no_summation` (503 to `get_current_summation`), `no_meter` (an Eagle-200 whose
//! device list holds a thermostat and no electric meter) — and plausible readings that change
//! with time (a daily-ish wave around a per-meter base, negative while an `export` meter's solar
//! panels produce).
//!
//! `/control/meters/{cloud_id}` (GET, PUT, DELETE) reads and changes meters at run time and
//! counts their requests; tests and `make up` use it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

/// Seconds from the Unix epoch to the Eagle epoch, 2000-01-01T00:00:00Z.
const EAGLE_EPOCH: u64 = 946_684_800;
/// Request times kept per meter.
const KEPT_TIMES: usize = 256;

/// Which API a meter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Cloud,
    Local200,
    Local100,
}

/// How a meter behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Ok,
    BadCredentials,
    Slow,
    Down,
    Malformed,
    /// Answers the demand but fails `get_current_summation` (503).
    NoSummation,
    /// An Eagle-200 whose `device_list` holds a thermostat and no electric meter; a
    /// `device_query` is answered by the thermostat.
    NoMeter,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        serde_json::from_value(json!(text)).map_err(|_| {
            format!(
                "unknown mode {text:?} (ok, bad_credentials, slow, down, malformed, no_summation, no_meter)"
            )
        })
    }
}

/// One simulated meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterSpec {
    pub api: Api,
    /// The cloud password (cloud) or install code (local).
    pub password: String,
    /// The registered e-mail (cloud).
    #[serde(default)]
    pub email: String,
    #[serde(default = "ok")]
    pub mode: Mode,
    /// Old firmware: XML even when JSON is asked for.
    #[serde(default)]
    pub xml_only: bool,
    /// JSON without the outer braces (as firmware sends list replies).
    #[serde(default)]
    pub bare_json: bool,
    /// The manuals' worked examples instead of live readings: demand 0x001738 / 0x3e8, time
    /// 0x185adc1d (Eagle-100); 21.499 kW, LastContact 0x59a0b67c (Eagle-200).
    #[serde(default)]
    pub manual: bool,
    /// Solar: demand is negative (export).
    #[serde(default)]
    pub export: bool,
}

fn ok() -> Mode {
    Mode::Ok
}

impl MeterSpec {
    /// An ok meter of `api` with the demo credentials of [`demo_password`] and [`demo_email`].
    pub fn demo(cloud_id: &str, api: Api) -> Self {
        Self {
            api,
            password: demo_password(cloud_id),
            email: demo_email(cloud_id),
            mode: Mode::Ok,
            xml_only: false,
            bare_json: false,
            manual: false,
            export: false,
        }
    }
}

/// The password the generated meters use: `pw-<cloud_id>`.
pub fn demo_password(cloud_id: &str) -> String {
    format!("pw-{cloud_id}")
}

/// The e-mail the generated meters use: `meter-<cloud_id>@example.org`.
pub fn demo_email(cloud_id: &str) -> String {
    format!("meter-{cloud_id}@example.org")
}

struct Meter {
    spec: MeterSpec,
    times: Mutex<VecDeque<Instant>>,
    requests: std::sync::atomic::AtomicU64,
    /// Requests by command name (lowercase).
    commands: Mutex<HashMap<String, u64>>,
}

struct Inner {
    meters: RwLock<HashMap<String, Arc<Meter>>>,
    slow: Duration,
    started: Instant,
}

/// The fake: a set of meters and the HTTP router serving them. Cheap to clone.
#[derive(Clone)]
pub struct FakeEagle {
    inner: Arc<Inner>,
}

impl FakeEagle {
    /// `slow`: how long a `slow` meter takes to answer.
    pub fn new(slow: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                meters: RwLock::default(),
                slow,
                started: Instant::now(),
            }),
        }
    }

    /// Adds or replaces a meter (its request count starts over).
    pub fn add(&self, cloud_id: &str, spec: MeterSpec) {
        let meter = Arc::new(Meter {
            spec,
            times: Mutex::default(),
            requests: 0.into(),
            commands: Mutex::default(),
        });
        self.write().insert(cloud_id.to_ascii_lowercase(), meter);
    }

    /// Changes a meter's mode, keeping its counts.
    pub fn set_mode(&self, cloud_id: &str, mode: Mode) {
        let cloud_id = cloud_id.to_ascii_lowercase();
        let mut meters = self.write();
        if let Some(old) = meters.get(&cloud_id) {
            let meter = Meter {
                spec: MeterSpec {
                    mode,
                    ..old.spec.clone()
                },
                times: Mutex::new(old.times.lock().expect("lock").clone()),
                requests: old
                    .requests
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .into(),
                commands: Mutex::new(old.commands.lock().expect("lock").clone()),
            };
            meters.insert(cloud_id, Arc::new(meter));
        }
    }

    pub fn remove(&self, cloud_id: &str) {
        self.write().remove(&cloud_id.to_ascii_lowercase());
    }

    /// HTTP requests the meter received (authenticated as it, whatever the outcome).
    pub fn requests(&self, cloud_id: &str) -> u64 {
        self.meter(cloud_id)
            .map_or(0, |m| m.requests.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Requests to the meter carrying the command `name` (`device_list`,
    /// `get_instantaneous_demand`, ...; any case), whatever the outcome.
    pub fn commands(&self, cloud_id: &str, name: &str) -> u64 {
        self.meter(cloud_id).map_or(0, |m| {
            let commands = m.commands.lock().expect("lock");
            commands
                .get(&name.to_ascii_lowercase())
                .copied()
                .unwrap_or(0)
        })
    }

    /// When the meter's most recent requests arrived (up to 256), oldest first.
    pub fn request_times(&self, cloud_id: &str) -> Vec<Instant> {
        self.meter(cloud_id)
            .map(|m| m.times.lock().expect("lock").iter().copied().collect())
            .unwrap_or_default()
    }

    /// Total requests over every meter.
    pub fn total_requests(&self) -> u64 {
        self.read()
            .values()
            .map(|m| m.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn meter(&self, cloud_id: &str) -> Option<Arc<Meter>> {
        self.read().get(&cloud_id.to_ascii_lowercase()).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Meter>>> {
        self.inner.meters.read().expect("meters lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Meter>>> {
        self.inner.meters.write().expect("meters lock")
    }

    /// The Eagle endpoints and the control API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/post_manager", post(post_manager))
            .route(
                "/control/meters/{cloud_id}",
                get(control_get).put(control_put).delete(control_delete),
            )
            .with_state(self.clone())
    }

    /// Serves until the process ends.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

// ---------------------------------------------------------------------------------------------
// the Eagle endpoint

/// Who is asking, from the cloud headers or Basic auth.
fn caller(headers: &HeaderMap) -> Option<(String, String, Option<String>, bool)> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(basic) = text("authorization").and_then(|v| v.strip_prefix("Basic ")) {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, code) = decoded.split_once(':')?;
        return Some((id.to_ascii_lowercase(), code.to_string(), None, true));
    }
    let id = text("cloud-id")?;
    Some((
        id.to_ascii_lowercase(),
        text("password")?.to_string(),
        Some(text("user")?.to_string()),
        false,
    ))
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
}

async fn post_manager(State(fake): State<FakeEagle>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((cloud_id, password, user, local)) = caller(&headers) else {
        return unauthorized();
    };
    let Some(meter) = fake.meter(&cloud_id) else {
        return unauthorized();
    };
    meter
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        let mut times = meter.times.lock().expect("lock");
        if times.len() == KEPT_TIMES {
            times.pop_front();
        }
        times.push_back(Instant::now());
    }
    let command = String::from_utf8_lossy(&body);
    let name = element(&command, "name")
        .unwrap_or_default()
        .to_ascii_lowercase();
    *meter
        .commands
        .lock()
        .expect("lock")
        .entry(name.clone())
        .or_default() += 1;
    let spec = &meter.spec;
    let credentials_ok = password == spec.password
        && (local || user.as_deref() == Some(spec.email.as_str()))
        && local == (spec.api != Api::Cloud);
    if !credentials_ok || spec.mode == Mode::BadCredentials {
        return unauthorized();
    }
    match spec.mode {
        Mode::Down if local => return aborted(),
        Mode::Down => return (StatusCode::SERVICE_UNAVAILABLE, "Eagle offline\n").into_response(),
        Mode::Slow => tokio::time::sleep(fake.inner.slow).await,
        Mode::Malformed => {
            return reply("<InstantaneousDemand>\r\n<Demand>0xZZ17 ?? garbage".to_string());
        }
        Mode::Ok | Mode::BadCredentials | Mode::NoSummation | Mode::NoMeter => {}
    }
    if spec.mode == Mode::NoSummation && name == "get_current_summation" {
        return (StatusCode::SERVICE_UNAVAILABLE, "summation unavailable\n").into_response();
    }
    let json = !spec.xml_only
        && element(&command, "format").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut sim = Sim::new(&cloud_id, spec.export, fake.inner.started.elapsed(), now);
    sim.manual = spec.manual;
    let no_meter = spec.mode == Mode::NoMeter;
    let body = match (spec.api, name.as_str()) {
        (Api::Local200, "device_list") => sim.device_list(!no_meter),
        (Api::Local200, "device_query") if no_meter => {
            let asked = element(&command, "hardwareaddress").unwrap_or_default();
            sim.thermostat_query(&asked)
        }
        (Api::Local200, "device_query") => sim.device_query(),
        (_, "get_instantaneous_demand") => sim.demand(json),
        (_, "get_current_summation") => sim.summation(json),
        (_, "get_network_info") => sim.network_info(json),
        _ => format!("<Error>\r\n<Text>Unknown command {name}</Text>\r\n</Error>\r\n"),
    };
    if json && spec.bare_json && body.starts_with('{') && body.ends_with('}') {
        return reply(body[1..body.len() - 1].to_string());
    }
    reply(body)
}

fn reply(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=UTF-8")], body).into_response()
}

/// Headers, then a body that fails: the client sees the connection drop.
fn aborted() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("eagle went away"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from_stream(failing))
        .expect("static response")
}

/// The text of the first `<name>` element of a command (case-insensitive).
fn element(command: &str, name: &str) -> Option<String> {
    let lower = command.to_ascii_lowercase();
    let open = format!("<{name}>");
    let start = lower.find(&open)? + open.len();
    let end = start + lower[start..].find("</")?;
    Some(command[start..end].trim().to_string())
}

/// A meter's readings at one moment.
struct Sim {
    hash: u64,
    export: bool,
    unix: u64,
    elapsed: f64,
    manual: bool,
}

impl Sim {
    fn new(cloud_id: &str, export: bool, elapsed: Duration, unix: u64) -> Self {
        let hash = cloud_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Self {
            hash,
            export,
            unix,
            elapsed: elapsed.as_secs_f64(),
            manual: false,
        }
    }

    /// Watts: a per-meter base, a slow wave, and a little flicker.
    fn demand_w(&self) -> i64 {
        if self.manual {
            return if self.export { -0x1738 } else { 0x1738 };
        }
        let base = 300.0 + (self.hash % 2700) as f64;
        let phase = (self.hash % 628) as f64 / 100.0;
        let wave = 0.3 * base * (self.unix as f64 / 600.0 + phase).sin();
        let flicker = ((self.unix.wrapping_mul(self.hash) >> 7) % 50) as f64;
        let w = (base + wave + flicker).round() as i64;
        if self.export { -w } else { w }
    }

    /// Watt-hours delivered so far (and received, for an exporting meter).
    fn summation_wh(&self) -> (u64, u64) {
        if self.manual {
            return (0x00a2_e0b8, 0x9187);
        }
        let start = 1_000_000 + (self.hash % 9_000_000);
        let grown = (self.elapsed * self.demand_w().unsigned_abs() as f64 / 3600.0) as u64
            + (self.unix % 100_000);
        if self.export {
            (start, start / 10 + grown)
        } else {
            (start + grown, 0)
        }
    }

    fn eagle_time(&self) -> String {
        if self.manual {
            return "0x185adc1d".into();
        }
        format!("0x{:08x}", self.unix.saturating_sub(EAGLE_EPOCH))
    }

    fn macs(&self) -> (String, String) {
        (
            format!("0xd8d5b9{:010x}", self.hash & 0xff_ffff_ffff),
            format!("0x000781{:010x}", (self.hash >> 20) & 0xff_ffff_ffff),
        )
    }

    fn notification(name: &str, fields: &[(&str, String)], json: bool) -> String {
        if json {
            let inner: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(v)))
                .collect();
            return json!({ name: inner }).to_string();
        }
        let mut out = format!("<{name}>\r\n");
        for (k, v) in fields {
            out.push_str(&format!("<{k}>{v}</{k}>\r\n"));
        }
        out.push_str(&format!("</{name}>\r\n"));
        out
    }

    fn demand(&self, json: bool) -> String {
        let (device, meter) = self.macs();
        let raw = (self.demand_w() as u64) & 0xff_ffff; // int24 two's complement
        Self::notification(
            "InstantaneousDemand",
            &[
                ("DeviceMacId", device),
                ("MeterMacId", meter),
                ("TimeStamp", self.eagle_time()),
                ("Demand", format!("0x{raw:06x}")),
                ("Multiplier", "0x00000001".into()),
                ("Divisor", "0x000003e8".into()),
                ("DigitsRight", "0x03".into()),
                ("DigitsLeft", "0x06".into()),
                ("SuppressLeadingZero", "Y".into()),
            ],
            json,
        )
    }

    fn summation(&self, json: bool) -> String {
        let (device, meter) = self.macs();
        let (delivered, received) = self.summation_wh();
        Self::notification(
            "CurrentSummation",
            &[
                ("DeviceMacId", device),
                ("MeterMacId", meter),
                ("TimeStamp", self.eagle_time()),
                ("SummationDelivered", format!("0x{delivered:08x}")),
                ("SummationReceived", format!("0x{received:08x}")),
                ("Multiplier", "0x00000001".into()),
                ("Divisor", "0x000003e8".into()),
                ("DigitsRight", "0x01".into()),
                ("DigitsLeft", "0x06".into()),
                ("SuppressLeadingZero", "Y".into()),
            ],
            json,
        )
    }

    fn network_info(&self, json: bool) -> String {
        let (device, _) = self.macs();
        Self::notification(
            "NetworkInfo",
            &[
                ("DeviceMacId", device),
                ("FWVersion", "2.0.21 (7179)".into()),
                ("HWVersion", "1.2.3".into()),
                ("Manufacturer", "Rainforest Automation, Inc.".into()),
                ("ModelId", "Z109-EAGLE".into()),
                ("Protocol", "Zigbee".into()),
            ],
            json,
        )
    }

    /// The Eagle-200's devices: its electric meter, or (`with_meter` false) only a thermostat.
    fn device_list(&self, with_meter: bool) -> String {
        let (device, meter) = self.macs();
        let (address, model, network) = if with_meter {
            (meter, "electric_meter", "0x0000")
        } else {
            (device, "thermostat", "0x0001")
        };
        format!(
            "<DeviceList>\r\n<Device>\r\n<HardwareAddress>{address}</HardwareAddress>\r\n<Manufacturer>generic</Manufacturer>\r\n<ModelId>{model}</ModelId>\r\n<Protocol>Zigbee</Protocol>\r\n<LastContact>0x{:08x}</LastContact>\r\n<ConnectionStatus>Connected</ConnectionStatus>\r\n<NetworkAddress>{network}</NetworkAddress>\r\n</Device>\r\n</DeviceList>\r\n",
            self.unix
        )
    }

    /// A `device_query` of `address` answered by a thermostat (the meter that was there is gone).
    fn thermostat_query(&self, address: &str) -> String {
        format!(
            "<Device>\r\n<DeviceDetails>\r\n<Name>Thermostat</Name>\r\n<HardwareAddress>{address}</HardwareAddress>\r\n<Protocol>Zigbee</Protocol>\r\n<NetworkAddress>0x0001</NetworkAddress>\r\n<Manufacturer>Generic</Manufacturer>\r\n<ModelId>thermostat</ModelId>\r\n<LastContact>0x{:08x}</LastContact>\r\n<ConnectionStatus>Connected</ConnectionStatus>\r\n</DeviceDetails>\r\n<Components>\r\n</Components>\r\n</Device>\r\n",
            self.unix
        )
    }

    fn device_query(&self) -> String {
        let (_, meter) = self.macs();
        let (delivered, received) = self.summation_wh();
        // the Eagle-200 manual's example: 21.499 kW at LastContact 0x59a0b67c
        let (demand, last_contact) = if self.manual {
            ("21.499 kW".to_string(), 0x59a0_b67c)
        } else {
            (
                format!("{:.3} kW", self.demand_w() as f64 / 1000.0),
                self.unix,
            )
        };
        let variable = |name: &str, value: String, units: &str| {
            format!(
                "<Variable>\r\n<Name>{name}</Name>\r\n<Value>{value}</Value>\r\n<Units>{units}</Units>\r\n</Variable>\r\n"
            )
        };
        format!(
            "<Device>\r\n<DeviceDetails>\r\n<Name>Power Meter</Name>\r\n<HardwareAddress>{meter}</HardwareAddress>\r\n<Protocol>Zigbee</Protocol>\r\n<NetworkAddress>0x0000</NetworkAddress>\r\n<Manufacturer>Generic</Manufacturer>\r\n<ModelId>electric_meter</ModelId>\r\n<LastContact>0x{:08x}</LastContact>\r\n<ConnectionStatus>Connected</ConnectionStatus>\r\n</DeviceDetails>\r\n<Components>\r\n<Component>\r\n<HardwareId></HardwareId>\r\n<FixedId>0</FixedId>\r\n<Name>Main</Name>\r\n<Variables>\r\n{}{}{}{}{}</Variables>\r\n</Component>\r\n</Components>\r\n</Device>\r\n",
            last_contact,
            variable("zigbee:InstantaneousDemand", demand, "kW"),
            variable(
                "zigbee:CurrentSummationDelivered",
                format!("{:.6}", delivered as f64 / 1000.0),
                "kWh"
            ),
            variable(
                "zigbee:CurrentSummationReceived",
                format!("{:.6}", received as f64 / 1000.0),
                "kWh"
            ),
            variable("zigbee:Multiplier", "1".into(), ""),
            variable("zigbee:Divisor", "1000".into(), ""),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// control API

async fn control_get(State(fake): State<FakeEagle>, Path(cloud_id): Path<String>) -> Response {
    match fake.meter(&cloud_id) {
        Some(meter) => Json(json!({
            "cloud_id": cloud_id,
            "api": meter.spec.api,
            "mode": meter.spec.mode,
            "xml_only": meter.spec.xml_only,
            "export": meter.spec.export,
            "requests": meter.requests.load(std::sync::atomic::Ordering::Relaxed),
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `PUT /control/meters/{id}`: a whole [`MeterSpec`], or `{"mode": "..."}` for a known meter.
async fn control_put(
    State(fake): State<FakeEagle>,
    Path(cloud_id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if let Ok(spec) = serde_json::from_value::<MeterSpec>(body.clone()) {
        fake.add(&cloud_id, spec);
        return StatusCode::NO_CONTENT.into_response();
    }
    match (
        fake.meter(&cloud_id),
        body.get("mode")
            .map(|m| serde_json::from_value::<Mode>(m.clone())),
    ) {
        (Some(_), Some(Ok(mode))) => {
            fake.set_mode(&cloud_id, mode);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "send a meter spec, or {\"mode\": ...} for a known meter\n",
        )
            .into_response(),
    }
}

async fn control_delete(State(fake): State<FakeEagle>, Path(cloud_id): Path<String>) -> StatusCode {
    fake.remove(&cloud_id);
    StatusCode::NO_CONTENT
}

/// fake-eagle: many simulated Rainforest Eagle meters (cloud relay and local APIs) over HTTP.
///
/// Meters 000001, 000002, ... (hex, --first upwards) get password pw-<cloud_id> and e-mail
/// meter-<cloud_id>@example.org.
#[derive(Debug, clap::Parser)]
#[command(name = "fake-eagle", version, about)]
pub struct Config {
    /// Where to listen
    #[arg(long, env = "FAKE_EAGLE_ADDR", default_value = "127.0.0.1:9445")]
    pub addr: std::net::SocketAddr,
    /// How many meters to simulate
    #[arg(long, env = "FAKE_EAGLE_METERS", default_value_t = 3)]
    pub meters: u32,
    /// The first cloud id, in hex
    #[arg(long, default_value = "000001", value_parser = parse_hex)]
    pub first: u32,
    /// The API every generated meter speaks
    #[arg(long, value_enum, default_value = "cloud")]
    pub api: Api,
    /// A meter's mode, as CLOUD_ID=MODE (ok, bad_credentials, slow, down, malformed, no_summation, no_meter); repeatable
    #[arg(long = "mode", env = "FAKE_EAGLE_MODES", value_delimiter = ',', value_parser = parse_mode)]
    pub modes: Vec<(String, Mode)>,
    /// Meters whose demand is negative (solar export), comma-separated cloud ids
    #[arg(long, env = "FAKE_EAGLE_EXPORT", value_delimiter = ',')]
    pub export: Vec<String>,
    /// How long a slow meter takes to answer
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow: Duration,
}

fn parse_hex(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 16).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<(String, Mode), String> {
    let (id, mode) = text.split_once('=').ok_or("expected CLOUD_ID=MODE")?;
    Ok((id.to_ascii_lowercase(), mode.parse()?))
}

/// Serves the configured meters until the process ends.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let fake = FakeEagle::new(config.slow);
    for n in config.first..config.first + config.meters {
        let id = format!("{n:06x}");
        let mut spec = MeterSpec::demo(&id, config.api);
        spec.export = config.export.contains(&id);
        fake.add(&id, spec);
    }
    for (id, mode) in &config.modes {
        fake.set_mode(id, *mode);
    }
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, meters = config.meters, "fake-eagle listening");
    fake.serve(listener).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_encode_like_an_eagle() {
        let sim = Sim::new("0012ab", true, Duration::from_secs(60), 1_700_000_000);
        assert!(sim.demand_w() < 0);
        let xml = sim.demand(false);
        assert!(xml.starts_with("<InstantaneousDemand>\r\n"));
        let raw = element(&xml, "demand").unwrap();
        assert_eq!(raw.len(), 8, "0x + 6 hex digits: {raw}");
        let json: serde_json::Value = serde_json::from_str(&sim.demand(true)).unwrap();
        assert_eq!(json["InstantaneousDemand"]["Divisor"], "0x000003e8");
        assert_eq!(
            element("<Command><NAME>x</NAME></Command>", "name").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn an_eagle_200_without_a_meter_lists_only_a_thermostat() {
        let sim = Sim::new("00ab01", false, Duration::from_secs(60), 1_700_000_000);
        let with = sim.device_list(true);
        assert!(with.contains("<ModelId>electric_meter</ModelId>"), "{with}");
        let without = sim.device_list(false);
        assert!(!without.contains("electric_meter"), "{without}");
        assert!(
            without.contains("<ModelId>thermostat</ModelId>"),
            "{without}"
        );
        let query = sim.thermostat_query("0x0001");
        assert_eq!(
            element(&query, "hardwareaddress").as_deref(),
            Some("0x0001")
        );
        assert_eq!("no_meter".parse::<Mode>(), Ok(Mode::NoMeter));
    }

    #[test]
    fn per_meter_accessors_ignore_the_case_of_the_cloud_id() {
        let fake = FakeEagle::new(Duration::from_secs(1));
        fake.add("00AB01", MeterSpec::demo("00ab01", Api::Local200));
        fake.set_mode("00Ab01", Mode::Down);
        assert_eq!(fake.meter("00ab01").map(|m| m.spec.mode), Some(Mode::Down));
        assert_eq!(
            fake.read().len(),
            1,
            "set_mode replaced the meter, not added one"
        );
        assert_eq!(fake.commands("00AB01", "Device_List"), 0);
        fake.remove("00AB01");
        assert!(fake.meter("00ab01").is_none());
    }
}
