//! `GET /services`: every snapshot as JSON, streamed a few dozen kilobytes at a time, so a
//! registry of 100 000 instances is never held as one document (nor as a tree of values).
//!
//! The document is `{"revision": R, "synced": true, "services": {"<name>": {…}, …}}`, one
//! service per line.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;
use serde_json::Value;

use crate::snapshot::{InstanceState, ServiceCell, Snapshot, Store};

/// A frame is sent once it holds this much: large enough that a big registry takes few
/// frames, small enough that a slow reader pins little memory.
const FRAME: usize = 32 * 1024;

/// One instance as `/services` shows it.
#[derive(Serialize)]
struct InstanceView<'a> {
    id: &'a str,
    addr: String,
    weight: u32,
    zone: &'a Option<Box<str>>,
    metadata: &'a Value,
    state: &'static str,
    usable: bool,
    inflight: u32,
    /// The peak-EWMA latency estimate (ms) as `ewma` weighs it now: decayed toward zero since
    /// its last sample. Absent before its first answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    ewma_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_seconds_left: Option<u64>,
}

/// One service as `/services` shows it.
#[derive(Serialize)]
struct ServiceView<'a> {
    balance: &'static str,
    usable: usize,
    panic: bool,
    ejections: u64,
    instances: Vec<InstanceView<'a>>,
}

/// How `/services` names an instance's state; the first that applies.
pub(crate) fn state_name(state: &InstanceState) -> &'static str {
    if state.ejected_until().is_some() {
        "ejected"
    } else if state.checks_failing() {
        "failing_checks"
    } else if state.on_probation() {
        "probation"
    } else {
        "healthy"
    }
}

fn view<'a>(cell: &ServiceCell, snapshot: &'a Snapshot, now: u64) -> ServiceView<'a> {
    let now_ns = crate::clock::now_ns();
    let instances = snapshot
        .instances()
        .iter()
        .zip(snapshot.states())
        .enumerate()
        .map(|(index, (i, state))| InstanceView {
            id: &i.id,
            addr: i.endpoint.addr.to_string(),
            weight: i.endpoint.weight,
            zone: &i.endpoint.zone,
            metadata: &i.endpoint.metadata,
            state: state_name(state),
            usable: snapshot.is_usable(index),
            inflight: state.inflight(),
            ewma_ms: state
                .latency()
                .sampled_ns()
                .map(|_| (state.latency().cost_ns(now_ns) / 1e3).round() / 1e3),
            ejected_seconds_left: state.ejected_seconds_left(now),
        })
        .collect();
    ServiceView {
        balance: cell.policy().balance.as_str(),
        usable: snapshot.usable(),
        panic: snapshot.in_panic(),
        ejections: cell.ejections(),
        instances,
    }
}

/// The `/services` document, produced frame by frame as the client reads.
pub(crate) struct ServicesBody {
    /// The services still to write, in name order; their snapshots are read when written.
    cells: std::vec::IntoIter<(String, Arc<ServiceCell>)>,
    /// What opens the document, until it is sent.
    head: Option<String>,
    /// Whether a service was written (the next needs a comma).
    wrote_one: bool,
    /// Whether the document is closed.
    done: bool,
    /// The instance clock, for ejection times.
    now: u64,
}

impl ServicesBody {
    /// Every service of `store`, or only `only`.
    pub(crate) fn new(store: &Store, only: Option<&str>, now: u64) -> ServicesBody {
        let cells = match only {
            None => store.cells(),
            Some(name) => store
                .get(name)
                .map(|cell| vec![(name.to_string(), cell)])
                .unwrap_or_default(),
        };
        let head = format!(
            "{{\"revision\":{},\"synced\":{},\"services\":{{",
            store.revision(),
            store.synced()
        );
        ServicesBody {
            cells: cells.into_iter(),
            head: Some(head),
            wrote_one: false,
            done: false,
            now,
        }
    }

    /// The next frame: the rest of the head, then services until the frame is full, then the
    /// end of the document.
    fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = self.head.take().map(String::into_bytes).unwrap_or_default();
        while out.len() < FRAME {
            let Some((name, cell)) = self.cells.next() else {
                out.extend_from_slice(b"\n}}\n");
                self.done = true;
                break;
            };
            if self.wrote_one {
                out.push(b',');
            }
            self.wrote_one = true;
            out.push(b'\n');
            let snapshot = arc_swap::Guard::into_inner(cell.load());
            let written = serde_json::to_writer(&mut out, &name).and_then(|()| {
                out.push(b':');
                serde_json::to_writer(&mut out, &view(&cell, &snapshot, self.now))
            });
            written.expect("serializing plain structs into memory cannot fail");
        }
        Some(Bytes::from(out))
    }
}

impl Body for ServicesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_frame().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use crate::registry::{Endpoint, Format};

    fn collect(mut body: ServicesBody) -> (serde_json::Value, usize) {
        let mut all = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.next_frame() {
            assert!(
                frame.len() < FRAME + 64 * 1024,
                "a frame of {}",
                frame.len()
            );
            all.extend_from_slice(&frame);
            frames += 1;
        }
        (serde_json::from_slice(&all).expect("valid JSON"), frames)
    }

    #[test]
    fn a_large_registry_streams_as_one_valid_document_in_many_frames() {
        let store = Store::new();
        for s in 0..300 {
            let instances = (0..10)
                .map(|i| Instance {
                    id: format!("i{i}"),
                    endpoint: Endpoint::new(
                        format!("10.0.{}.{i}:80", s % 250).parse().unwrap(),
                        Format::Plain,
                    ),
                })
                .collect();
            store.publish(&format!("svc-{s:03}"), instances);
        }
        let (doc, frames) = collect(ServicesBody::new(&store, None, 0));
        assert!(frames > 5, "{frames} frames");
        let services = doc["services"].as_object().unwrap();
        assert_eq!(services.len(), 300);
        assert_eq!(doc["services"]["svc-007"]["instances"][3]["id"], "i3");
        assert_eq!(
            doc["services"]["svc-007"]["instances"][3]["state"],
            "healthy"
        );

        let (one, _) = collect(ServicesBody::new(&store, Some("svc-042"), 0));
        assert_eq!(one["services"].as_object().unwrap().len(), 1);
        let (none, _) = collect(ServicesBody::new(&store, Some("nope"), 0));
        assert_eq!(none["services"], serde_json::json!({}));
        let (empty, _) = collect(ServicesBody::new(&Store::new(), None, 0));
        assert_eq!(empty["services"], serde_json::json!({}));
    }
}
