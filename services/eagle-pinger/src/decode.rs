//! What an Eagle answers, decoded as the manuals say (PROTOCOLS.md §1). Plain functions over
//! text, no I/O.
//!
//! - Eagle-100 REST replies (cloud relay and local `post_manager`): XML fragments or JSON with one
//!   key per notification, list replies possibly without their outer braces; element names are
//!   case-insensitive; numbers are hex strings, scaled by `Multiplier / Divisor` (0 means 1);
//!   demand is signed (export); times are seconds since 2000-01-01T00:00:00Z (0 = not set).
//! - Eagle-200 local replies: `<DeviceList>` (the meter is the device whose `ModelId` is
//!   `electric_meter`) and `<Device>` from `device_query`, whose values are decimal text already
//!   scaled (`21.499 kW` or `1.965000`), with `LastContact` in hex Unix seconds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use quick_xml::events::Event as XmlEvent;

/// Seconds from the Unix epoch to the Eagle epoch, 2000-01-01T00:00:00Z.
pub const EAGLE_EPOCH: i64 = 946_684_800;

/// One decoded meter reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub device_mac: String,
    pub meter_mac: String,
    /// Negative while the household exports (solar).
    pub demand_kw: f64,
    pub summation_delivered_kwh: Option<f64>,
    pub summation_received_kwh: Option<f64>,
    /// The meter's own clock, when it set one.
    pub meter_time: Option<DateTime<Utc>>,
}

/// Why a reply is not a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not the documented shape: dead-lettered with the raw body.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The device or relay refused the credentials in its reply body.
    #[error("login refused: {0}")]
    Refused(String),
    /// Well-formed, but the meter had no value this time (a known Eagle-200 quirk: a blank
    /// demand).
    #[error("no value: {0}")]
    Empty(String),
    /// An Eagle-200 without an electric meter: none in its device list, or the device queried
    /// is another kind.
    #[error("{0}")]
    NoMeter(String),
}

fn malformed(text: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(text.into())
}

// ---------------------------------------------------------------------------------------------
// numbers and times

/// Parses `0x1c9347b8` (or bare hex digits) as an unsigned number.
pub fn hex_u64(text: &str) -> Result<u64, DecodeError> {
    let digits = hex_digits(text)?;
    u64::from_str_radix(digits, 16).map_err(|_| malformed(format!("{text:?} is not hex")))
}

fn hex_digits(text: &str) -> Result<&str, DecodeError> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(format!("{text:?} is not hex")));
    }
    Ok(digits)
}

/// A signed demand: up to 6 hex digits is ZigBee's int24, more is a 32-bit two's complement.
pub fn signed_demand(text: &str) -> Result<i64, DecodeError> {
    let digits = hex_digits(text)?;
    let raw = hex_u64(digits)? as i64;
    Ok(match digits.len() {
        0..=6 if raw & (1 << 23) != 0 => raw - (1 << 24),
        7..=8 if raw & (1 << 31) != 0 => raw - (1 << 32),
        9.. => return Err(malformed(format!("demand {text:?} is wider than 32 bits"))),
        _ => raw,
    })
}

/// `raw * multiplier / divisor`, where a multiplier or divisor of 0 counts as 1.
pub fn scale(raw: i64, multiplier: u64, divisor: u64) -> f64 {
    raw as f64 * multiplier.max(1) as f64 / divisor.max(1) as f64
}

/// An Eagle-100 time (hex seconds since 2000-01-01 UTC); `None` for 0, "not set".
pub fn eagle_time(text: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let secs = hex_u64(text)?;
    if secs == 0 {
        return Ok(None);
    }
    DateTime::from_timestamp(EAGLE_EPOCH + secs as i64, 0)
        .map(Some)
        .ok_or_else(|| malformed(format!("time {text:?} out of range")))
}

/// An Eagle-200 `LastContact` (hex Unix seconds).
pub fn unix_hex_time(text: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let secs = hex_u64(text)?;
    Ok((secs != 0)
        .then(|| DateTime::from_timestamp(secs as i64, 0))
        .flatten())
}

/// An Eagle-200 value: `21.499 kW`, `1.965000`, or empty (`None`).
pub fn decimal_value(text: &str) -> Result<Option<f64>, DecodeError> {
    let Some(number) = text.split_whitespace().next() else {
        return Ok(None);
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Some)
        .ok_or_else(|| malformed(format!("value {text:?} is not a number")))
}

// ---------------------------------------------------------------------------------------------
// Eagle-100 REST replies

/// A notification: its name and its fields, names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub name: String,
    pub fields: HashMap<String, String>,
}

impl Notification {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn need(&self, name: &str) -> Result<&str, DecodeError> {
        self.get(name)
            .ok_or_else(|| malformed(format!("{} has no {name}", self.name)))
    }

    fn factor(&self, name: &str) -> Result<u64, DecodeError> {
        self.get(name).map_or(Ok(1), hex_u64)
    }
}

/// Parses a REST reply, XML or JSON (with or without the outer braces), into its notification.
pub fn notification(body: &str) -> Result<Notification, DecodeError> {
    let trimmed = body.trim_start_matches('\u{feff}').trim();
    let note = match trimmed.as_bytes().first() {
        Some(b'<') => xml_notification(trimmed)?,
        Some(b'{') => json_notification(trimmed)?,
        Some(b'"') => json_notification(&format!("{{{trimmed}}}"))?,
        Some(_) => return Err(malformed("neither XML nor JSON")),
        None => return Err(malformed("empty body")),
    };
    refused_check(&note)?;
    Ok(note)
}

fn refused_check(note: &Notification) -> Result<(), DecodeError> {
    if note.name != "error" {
        return Ok(());
    }
    let text: Vec<&str> = note.fields.values().map(String::as_str).collect();
    let text = text.join(" ");
    let lower = text.to_ascii_lowercase();
    let words = [
        "auth",
        "password",
        "credential",
        "login",
        "user",
        "install code",
    ];
    if words.iter().any(|w| lower.contains(w)) {
        Err(DecodeError::Refused(text))
    } else {
        Err(malformed(format!("error reply: {text}")))
    }
}

fn xml_notification(body: &str) -> Result<Notification, DecodeError> {
    let nodes = parse_xml(body)?;
    let root = nodes
        .into_iter()
        .next()
        .ok_or_else(|| malformed("no XML element"))?;
    let fields = if root.children.is_empty() && !root.text.is_empty() {
        HashMap::from([("text".to_string(), root.text)])
    } else {
        root.children
            .into_iter()
            .map(|child| (child.name, child.text))
            .collect()
    };
    Ok(Notification {
        name: root.name,
        fields,
    })
}

fn json_notification(body: &str) -> Result<Notification, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| malformed(format!("JSON: {e}")))?;
    let serde_json::Value::Object(top) = value else {
        return Err(malformed("JSON reply is not an object"));
    };
    let (name, inner) = match top.iter().next() {
        Some((name, serde_json::Value::Object(inner))) if top.len() == 1 => (name.clone(), inner),
        _ => return Err(malformed("JSON reply is not {\"<Notification>\": {...}}")),
    };
    let fields = inner
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            (k.to_ascii_lowercase(), text)
        })
        .collect();
    Ok(Notification {
        name: name.to_ascii_lowercase(),
        fields,
    })
}

fn expect_name(note: &Notification, name: &str) -> Result<(), DecodeError> {
    if note.name == name {
        Ok(())
    } else {
        Err(malformed(format!("expected {name}, got {}", note.name)))
    }
}

/// `get_instantaneous_demand` → a reading without summations.
pub fn instantaneous_demand(body: &str) -> Result<Reading, DecodeError> {
    let note = notification(body)?;
    expect_name(&note, "instantaneousdemand")?;
    let raw = signed_demand(note.need("demand")?)?;
    Ok(Reading {
        device_mac: note.get("devicemacid").unwrap_or_default().to_string(),
        meter_mac: note.get("metermacid").unwrap_or_default().to_string(),
        demand_kw: scale(raw, note.factor("multiplier")?, note.factor("divisor")?),
        summation_delivered_kwh: None,
        summation_received_kwh: None,
        meter_time: note.get("timestamp").map(eagle_time).transpose()?.flatten(),
    })
}

/// `get_current_summation` → (delivered kWh, received kWh).
pub fn current_summation(body: &str) -> Result<(f64, f64), DecodeError> {
    let note = notification(body)?;
    expect_name(&note, "currentsummation")?;
    let (multiplier, divisor) = (note.factor("multiplier")?, note.factor("divisor")?);
    let value = |name: &str| -> Result<f64, DecodeError> {
        let raw = note.get(name).map_or(Ok(0), hex_u64)?;
        Ok(scale(raw as i64, multiplier, divisor))
    };
    if note.get("summationdelivered").is_none() && note.get("summationreceived").is_none() {
        return Err(malformed("CurrentSummation has no SummationDelivered"));
    }
    Ok((value("summationdelivered")?, value("summationreceived")?))
}

// ---------------------------------------------------------------------------------------------
// Eagle-200 local replies

/// `device_list` → the `HardwareAddress` of the electric meter ([`DecodeError::NoMeter`] when
/// the list holds none).
pub fn meter_address(body: &str) -> Result<String, DecodeError> {
    let nodes = parse_xml(body)?;
    let list = nodes
        .iter()
        .find(|n| n.name == "devicelist")
        .ok_or_else(|| malformed("expected DeviceList"))?;
    let meter = list
        .children
        .iter()
        .filter(|d| d.name == "device")
        .find(|d| {
            d.child("modelid")
                .is_some_and(|m| m.text.eq_ignore_ascii_case("electric_meter"))
        })
        .ok_or_else(|| DecodeError::NoMeter("no electric_meter in the device list".into()))?;
    meter
        .child("hardwareaddress")
        .map(|a| a.text.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| malformed("the electric_meter in the device list has no HardwareAddress"))
}

/// A non-empty `DeviceDetails` field.
fn detail<'a>(details: Option<&'a Node>, name: &str) -> Option<&'a str> {
    details
        .and_then(|d| d.child(name))
        .map(|n| n.text.as_str())
        .filter(|t| !t.is_empty())
}

/// Two hardware addresses are the same device whatever their case and `0x`.
fn same_address(a: &str, b: &str) -> bool {
    let bare = |text: &str| {
        let text = text.trim().to_ascii_lowercase();
        text.trim_start_matches("0x").to_string()
    };
    bare(a) == bare(b)
}

/// An Eagle-200 summation: a value whose fraction is exactly `.000000` (other than 0) is
/// sometimes wrong on that device, so it is left out (as eagle200_reader does) rather than
/// recorded as the meter's total.
fn summation(values: &HashMap<String, String>, name: &str) -> Result<Option<f64>, DecodeError> {
    let Some(text) = values.get(name) else {
        return Ok(None);
    };
    let value = decimal_value(text)?;
    let suspect = text
        .split_whitespace()
        .next()
        .is_some_and(|number| number.ends_with(".000000"));
    Ok(value.filter(|v| !(suspect && *v != 0.0)))
}

/// `device_query` of the meter at `address` → a reading. A reply about another device is
/// malformed; one whose `ModelId` is not `electric_meter` is [`DecodeError::NoMeter`].
pub fn device_query(body: &str, address: &str) -> Result<Reading, DecodeError> {
    let nodes = parse_xml(body)?;
    let device = nodes
        .iter()
        .find(|n| n.name == "device")
        .ok_or_else(|| malformed("expected Device"))?;
    let details = device.child("devicedetails");
    if let Some(answered) =
        detail(details, "hardwareaddress").filter(|answered| !same_address(answered, address))
    {
        return Err(malformed(format!(
            "device_query of {address} answered for {answered}"
        )));
    }
    if let Some(model) =
        detail(details, "modelid").filter(|model| !model.eq_ignore_ascii_case("electric_meter"))
    {
        return Err(DecodeError::NoMeter(format!(
            "device {address} is a {model}, not an electric_meter"
        )));
    }
    let mut values: HashMap<String, String> = HashMap::new();
    for variable in device.descendants("variable") {
        if let Some(name) = variable.child("name") {
            let value = variable.child("value").map_or("", |v| v.text.as_str());
            values.insert(name.text.to_ascii_lowercase(), value.to_string());
        }
    }
    let demand_kw = match values.get("zigbee:instantaneousdemand") {
        None => return Err(malformed("Device has no zigbee:InstantaneousDemand")),
        Some(text) => decimal_value(text)?
            .ok_or_else(|| DecodeError::Empty("InstantaneousDemand is blank".into()))?,
    };
    Ok(Reading {
        device_mac: String::new(),
        meter_mac: details
            .and_then(|d| d.child("hardwareaddress"))
            .map(|a| a.text.clone())
            .unwrap_or_default(),
        demand_kw,
        summation_delivered_kwh: summation(&values, "zigbee:currentsummationdelivered")?,
        summation_received_kwh: summation(&values, "zigbee:currentsummationreceived")?,
        meter_time: details
            .and_then(|d| d.child("lastcontact"))
            .map(|t| unix_hex_time(&t.text))
            .transpose()?
            .flatten(),
    })
}

// ---------------------------------------------------------------------------------------------
// a small XML tree

/// An element: lowercased name, trimmed text, children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn descendants<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a Node> + 'a> {
        Box::new(self.children.iter().flat_map(move |c| {
            let own = (c.name == name).then_some(c);
            own.into_iter().chain(c.descendants(name))
        }))
    }
}

/// Parses XML fragments (several roots allowed, as the Eagle sends them) into trees.
pub fn parse_xml(body: &str) -> Result<Vec<Node>, DecodeError> {
    let mut reader = quick_xml::Reader::from_str(body);
    // text is trimmed per element at its end tag, so `x &amp; y` keeps its spaces
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut roots = Vec::new();
    let bad = |e: &dyn std::fmt::Display| malformed(format!("XML: {e}"));
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            XmlEvent::Start(start) => stack.push(Node {
                name: element_name(start.local_name().as_ref()),
                ..Node::default()
            }),
            XmlEvent::Empty(empty) => {
                let node = Node {
                    name: element_name(empty.local_name().as_ref()),
                    ..Node::default()
                };
                attach(&mut stack, &mut roots, node);
            }
            XmlEvent::End(_) => {
                let mut node = stack.pop().ok_or_else(|| malformed("XML: stray end tag"))?;
                node.text = node.text.trim().to_string();
                attach(&mut stack, &mut roots, node);
            }
            XmlEvent::Text(text) => {
                let text = text.decode().map_err(|e| bad(&e))?;
                append_text(&mut stack, &text)?;
            }
            XmlEvent::CData(data) => {
                let text = data.decode().map_err(|e| bad(&e))?;
                append_text(&mut stack, &text)?;
            }
            XmlEvent::GeneralRef(reference) => {
                let name = reference.decode().map_err(|e| bad(&e))?;
                let text = entity(&name)
                    .ok_or_else(|| malformed(format!("XML: unknown entity &{name};")))?;
                append_text(&mut stack, &text)?;
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(malformed(format!("XML: <{}> is not closed", open.name)));
    }
    Ok(roots)
}

fn element_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).to_ascii_lowercase()
}

fn attach(stack: &mut [Node], roots: &mut Vec<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => roots.push(node),
    }
}

fn append_text(stack: &mut [Node], text: &str) -> Result<(), DecodeError> {
    match stack.last_mut() {
        Some(node) => {
            node.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(malformed("text outside any XML element")),
    }
}

fn entity(name: &str) -> Option<String> {
    let named = match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        _ => {
            let code = match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => name.strip_prefix('#')?.parse().ok()?,
            };
            return char::from_u32(code).map(String::from);
        }
    };
    Some(named.to_string())
}

#[cfg(test)]
mod tests;
