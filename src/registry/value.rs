//! Registry values: the three formats cairn reads and writes, detected per key.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::addr::Addr;
use crate::parsed::deserialize_from_str;

/// The value formats found in the wild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `host:port`, as the seed registry and go-zero write it.
    Plain,
    /// `{"addr":"host:port","weight":3,"zone":"eu-1a","metadata":{...}}`; only `addr` is required.
    Json,
    /// `{"Op":0,"Addr":"host:port","Metadata":...}`, as written by
    /// `go.etcd.io/etcd/client/v3/naming/endpoints`.
    EtcdEndpoints,
}

impl Format {
    /// The name used in config files, flags and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Json => "json",
            Format::EtcdEndpoints => "etcd-endpoints",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Format::Plain),
            "json" => Ok(Format::Json),
            "etcd-endpoints" => Ok(Format::EtcdEndpoints),
            other => Err(format!(
                "unknown format {other:?}: expected plain, json or etcd-endpoints"
            )),
        }
    }
}

deserialize_from_str!(Format);

/// What one registry value says about an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where the instance is dialed.
    pub addr: Addr,
    /// Relative weight; 1 unless a JSON value says otherwise.
    pub weight: u32,
    /// Failure zone, when the value names one (boxed: at 100 000 instances every byte of an
    /// instance counts).
    pub zone: Option<Box<str>>,
    /// Free-form metadata; an empty object when absent.
    pub metadata: Value,
    /// The format the value was written in.
    pub format: Format,
}

impl Endpoint {
    /// An endpoint with default weight, no zone and no metadata.
    pub fn new(addr: Addr, format: Format) -> Endpoint {
        Endpoint {
            addr,
            weight: 1,
            zone: None,
            metadata: Value::Object(Map::new()),
            format,
        }
    }

    /// Encodes the endpoint in its format, as it is written to etcd.
    ///
    /// The plain format carries only the address; etcd-endpoints carries address and metadata.
    pub fn encode(&self) -> String {
        let addr = self.addr.to_string();
        match self.format {
            Format::Plain => addr,
            Format::Json => {
                let mut obj = Map::new();
                obj.insert("addr".into(), Value::String(addr));
                obj.insert("weight".into(), Value::from(self.weight));
                if let Some(zone) = &self.zone {
                    obj.insert("zone".into(), Value::String(zone.to_string()));
                }
                if !is_empty_metadata(&self.metadata) {
                    obj.insert("metadata".into(), self.metadata.clone());
                }
                Value::Object(obj).to_string()
            }
            Format::EtcdEndpoints => {
                let metadata = if is_empty_metadata(&self.metadata) {
                    Value::Null
                } else {
                    self.metadata.clone()
                };
                // Field order matches what Go's encoding/json writes for endpoints.Update.
                format!(
                    "{{\"Op\":0,\"Addr\":{},\"Metadata\":{}}}",
                    Value::String(addr),
                    metadata
                )
            }
        }
    }
}

fn is_empty_metadata(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Why a registry value was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The value is not UTF-8.
    #[error("value is not UTF-8")]
    NotUtf8,
    /// The value is empty or only whitespace.
    #[error("value is empty")]
    Empty,
    /// A JSON value that cannot be read.
    #[error("value is not valid JSON: {0}")]
    Json(String),
    /// A JSON object with neither `addr` nor `Addr`.
    #[error("JSON value has no \"addr\" (or \"Addr\") string field")]
    NoAddr,
    /// A field with the wrong type or range.
    #[error("field \"{field}\" {why}")]
    Field {
        /// The JSON field at fault.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The address cannot be dialed.
    #[error("{0}")]
    Addr(String),
}

/// Values longer than this are not instance descriptions; etcd itself caps requests at 1.5 MiB.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Detects the format of a registry value and reads it.
///
/// # Errors
/// A [`ValueError`] saying why the value fits none of the formats or names an unusable address.
pub fn parse_value(raw: &[u8]) -> Result<Endpoint, ValueError> {
    if raw.len() > MAX_VALUE_LEN {
        return Err(ValueError::Field {
            field: "value",
            why: "is longer than 64 KiB",
        });
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| ValueError::NotUtf8)?
        .trim();
    if text.is_empty() {
        return Err(ValueError::Empty);
    }
    if !text.starts_with('{') {
        let addr = text.parse::<Addr>().map_err(ValueError::Addr)?;
        return Ok(Endpoint::new(addr, Format::Plain));
    }
    let obj: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| ValueError::Json(e.to_string()))?;
    if let Some(addr) = obj.get("addr") {
        parse_json(addr, &obj)
    } else if let Some(addr) = obj.get("Addr") {
        parse_etcd_endpoints(addr, &obj)
    } else {
        Err(ValueError::NoAddr)
    }
}

fn parse_addr_field(v: &Value, field: &'static str) -> Result<Addr, ValueError> {
    let s = v.as_str().ok_or(ValueError::Field {
        field,
        why: "must be a string",
    })?;
    s.trim().parse().map_err(ValueError::Addr)
}

fn parse_json(addr: &Value, obj: &Map<String, Value>) -> Result<Endpoint, ValueError> {
    let addr = parse_addr_field(addr, "addr")?;
    let weight = match obj.get("weight") {
        None | Some(Value::Null) => 1,
        Some(w) => w
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(ValueError::Field {
                field: "weight",
                why: "must be a whole number from 0 to 4294967295",
            })?,
    };
    let zone = match obj.get("zone") {
        None | Some(Value::Null) => None,
        Some(Value::String(z)) => Some(z.as_str().into()),
        Some(_) => {
            return Err(ValueError::Field {
                field: "zone",
                why: "must be a string",
            })
        }
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => {
            return Err(ValueError::Field {
                field: "metadata",
                why: "must be an object",
            })
        }
    };
    Ok(Endpoint {
        addr,
        weight,
        zone,
        metadata,
        format: Format::Json,
    })
}

fn parse_etcd_endpoints(addr: &Value, obj: &Map<String, Value>) -> Result<Endpoint, ValueError> {
    // Any PUT is an add or update whatever `Op` says: etcd's own resolver treats it that way,
    // and deletion is a plain etcd delete.
    let addr = parse_addr_field(addr, "Addr")?;
    let metadata = match obj.get("Metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m) => m.clone(),
    };
    Ok(Endpoint {
        metadata,
        ..Endpoint::new(addr, Format::EtcdEndpoints)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(s: &str) -> Addr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_values_in_every_address_form() {
        let e = parse_value(b"10.0.0.5:8080").unwrap();
        assert_eq!(
            e,
            Endpoint::new(Addr::Ip("10.0.0.5:8080".parse().unwrap()), Format::Plain)
        );
        let e = parse_value(b"[2001:db8::1]:443\n").unwrap();
        assert_eq!(e.addr, Addr::Ip("[2001:db8::1]:443".parse().unwrap()));
        let e = parse_value(b" Orders-1.svc.cluster.local:80 ").unwrap();
        assert_eq!(
            e.addr,
            Addr::Host {
                host: "orders-1.svc.cluster.local".into(),
                port: 80
            }
        );
        assert_eq!(e.addr.to_string(), "orders-1.svc.cluster.local:80");
    }

    #[test]
    fn json_values_carry_weight_zone_and_metadata() {
        let e = parse_value(
            br#"{"addr":"10.0.0.5:8080","weight":3,"zone":"eu-1a","metadata":{"v":"1"}}"#,
        )
        .unwrap();
        assert_eq!(e.addr, addr("10.0.0.5:8080"));
        assert_eq!(e.weight, 3);
        assert_eq!(e.zone.as_deref(), Some("eu-1a"));
        assert_eq!(e.metadata, json!({"v": "1"}));
        assert_eq!(e.format, Format::Json);
        let e = parse_value(br#"{"addr":"10.0.0.5:8080"}"#).unwrap();
        assert_eq!((e.weight, e.zone, e.metadata), (1, None, json!({})));
    }

    #[test]
    fn etcd_endpoints_values_as_go_writes_them() {
        let e = parse_value(br#"{"Op":0,"Addr":"10.0.0.5:8080","Metadata":null}"#).unwrap();
        assert_eq!(
            e,
            Endpoint::new(addr("10.0.0.5:8080"), Format::EtcdEndpoints)
        );
        let e = parse_value(br#"{"Op":1,"Addr":"10.0.0.6:8080","Metadata":{"weight":2}}"#).unwrap();
        assert_eq!(e.metadata, json!({"weight": 2}));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"   ", "empty"),
            (b"\xff\xfe", "UTF-8"),
            (b"10.0.0.5", "no port"),
            (b"10.0.0.5:0", "port 0"),
            (b"10.0.0.5:99999", "invalid port"),
            (b"0.0.0.0:80", "unspecified"),
            (b"::1:80", "brackets"),
            (b"bad host:80", "not a valid hostname"),
            (b":80", "empty"),
            (b"{not json", "not valid JSON"),
            (b"{\"host\":\"a\"}", "no \"addr\""),
            (b"{\"addr\":5}", "must be a string"),
            (b"{\"addr\":\"a:1\",\"weight\":-1}", "weight"),
            (b"{\"addr\":\"a:1\",\"zone\":3}", "zone"),
            (b"{\"addr\":\"a:1\",\"metadata\":[1]}", "metadata"),
            (b"[1,2]", "no port"),
        ];
        for (raw, why) in cases {
            let e = parse_value(raw).expect_err(&String::from_utf8_lossy(raw));
            assert!(
                e.to_string().contains(why),
                "{:?}: {e}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(parse_value(&vec![b'a'; MAX_VALUE_LEN + 1]).is_err());
    }

    #[test]
    fn encode_round_trips_through_parse() {
        let mut e = Endpoint::new(addr("10.0.0.5:8080"), Format::Json);
        e.weight = 3;
        e.zone = Some("eu-1a".into());
        e.metadata = json!({"version": "1.4.2"});
        for format in [Format::Plain, Format::Json, Format::EtcdEndpoints] {
            let mut want = Endpoint {
                format,
                ..e.clone()
            };
            if format == Format::Plain {
                want = Endpoint::new(want.addr, Format::Plain);
            }
            if format == Format::EtcdEndpoints {
                want.weight = 1;
                want.zone = None;
            }
            assert_eq!(
                parse_value(want.encode().as_bytes()).unwrap(),
                want,
                "{format}"
            );
        }
        assert_eq!(
            Endpoint::new(addr("10.0.0.5:8080"), Format::EtcdEndpoints).encode(),
            r#"{"Op":0,"Addr":"10.0.0.5:8080","Metadata":null}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_value(&raw);
        }

        #[test]
        fn json_like_values_parse_or_fail_without_panicking(
            addr in "[a-z0-9.:\\[\\]-]{0,40}",
            weight in "-?[0-9]{0,25}(\\.[0-9])?",
            extra in "[,{}\"a-z0-9:\\[\\] ]{0,30}",
        ) {
            for text in [
                format!(r#"{{"addr":"{addr}","weight":{weight}{extra}}}"#),
                format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{extra}}}"#),
                format!("{addr}{extra}"),
            ] {
                if let Ok(e) = parse_value(text.as_bytes()) {
                    // Whatever parses round-trips through its own encoding.
                    proptest::prop_assert_eq!(parse_value(e.encode().as_bytes()).map(|e| e.addr), Ok(e.addr));
                }
            }
        }
    }
}
