//! How cairn's calls to etcd go: `cairn_etcd_operations_total{operation,status}`, the duration
//! of the unary ones, and whether each member answers its status call.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::error::EtcdError;

/// The etcd calls cairn makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A page of a prefix list.
    Range,
    /// A watch opened or reopened.
    Watch,
    /// A transaction.
    Txn,
    /// A put.
    Put,
    /// A delete.
    Delete,
    /// A lease granted.
    LeaseGrant,
    /// A keep-alive stream opened, or a keep-alive sent on it.
    KeepAlive,
    /// A lease revoked.
    LeaseRevoke,
    /// A user authenticated.
    Authenticate,
    /// A member's status asked.
    Status,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Range => "range",
            Op::Watch => "watch",
            Op::Txn => "txn",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::LeaseGrant => "lease_grant",
            Op::KeepAlive => "keepalive",
            Op::LeaseRevoke => "lease_revoke",
            Op::Authenticate => "authenticate",
            Op::Status => "status",
        }
    }

    /// Whether the call is unary (a stream's duration says nothing).
    fn unary(self) -> bool {
        !matches!(self, Op::Watch | Op::KeepAlive)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationResult {
    operation: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Member {
    endpoint: String,
}

fn histogram() -> Histogram {
    // 0.5 ms to about 16 s: a loopback call to a healthy member up to a long election.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The counters of every etcd call. Clones share them.
#[derive(Debug, Clone)]
pub struct EtcdMetrics {
    operations: Family<OperationResult, Counter>,
    durations: Family<Operation, Histogram, fn() -> Histogram>,
    members: Family<Member, Gauge>,
    /// Each member's last answer, for the status page.
    answers: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Default for EtcdMetrics {
    fn default() -> Self {
        EtcdMetrics {
            operations: Family::default(),
            durations: Family::new_with_constructor(histogram),
            members: Family::default(),
            answers: Arc::default(),
        }
    }
}

impl EtcdMetrics {
    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_etcd_operations",
            "Calls to etcd, by operation and outcome",
            self.operations.clone(),
        );
        registry.register(
            "cairn_etcd_operation_duration_seconds",
            "Time taken by unary calls to etcd",
            self.durations.clone(),
        );
        registry.register(
            "cairn_etcd_member_up",
            "1 while the member answers its status call",
            self.members.clone(),
        );
    }

    /// Runs `call` as operation `op`, counting its outcome and, for unary calls, its duration.
    pub(crate) async fn observe<T, F>(&self, op: Op, call: F) -> Result<T, EtcdError>
    where
        F: Future<Output = Result<T, EtcdError>>,
    {
        let start = Instant::now();
        let result = call.await;
        self.count(op, result.is_ok());
        if op.unary() {
            self.durations
                .get_or_create(&Operation {
                    operation: op.as_str(),
                })
                .observe(start.elapsed().as_secs_f64());
        }
        result
    }

    /// Counts one call of `op`.
    pub(crate) fn count(&self, op: Op, ok: bool) {
        self.operations
            .get_or_create(&OperationResult {
                operation: op.as_str(),
                status: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Each member asked so far, with whether it answered its last status call.
    pub fn members(&self) -> Vec<(String, bool)> {
        let answers = self
            .answers
            .lock()
            .expect("the members lock is never held across a panic");
        answers.iter().map(|(e, up)| (e.clone(), *up)).collect()
    }

    /// Records whether the member at `endpoint` answered.
    pub(crate) fn member(&self, endpoint: &str, up: bool) {
        self.answers
            .lock()
            .expect("the members lock is never held across a panic")
            .insert(endpoint.to_string(), up);
        self.members
            .get_or_create(&Member {
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(up));
    }
}
