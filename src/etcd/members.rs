//! Each member's health: a status call at start and every 30 s, feeding
//! `cairn_etcd_member_up{endpoint}`, with one log line when a member stops or starts answering,
//! naming it and saying why (a certificate that fails verification, a refused connection, …).

use std::time::Duration;

use etcd_client::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::connect_member;
use super::config::EtcdConfig;
use super::error::EtcdError;
use super::metrics::{EtcdMetrics, Op};

/// How often each member is asked: often enough to see a member go before an operator does, rare
/// enough to cost nothing.
const EVERY: Duration = Duration::from_secs(30);

/// How long a status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The task that asks each member for its status.
#[derive(Debug)]
pub struct Members {
    config: EtcdConfig,
    metrics: EtcdMetrics,
}

impl Members {
    /// Watches the members of `config`, counting on `metrics`.
    pub fn new(config: EtcdConfig, metrics: EtcdMetrics) -> Members {
        Members { config, metrics }
    }

    /// Asks every member until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut members: Vec<(String, Option<Client>, Option<bool>)> = self
            .config
            .endpoints
            .iter()
            .map(|e| (e.as_str().to_string(), None, None))
            .collect();
        loop {
            for (endpoint, client, was_up) in &mut members {
                let answer = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = self.status(endpoint, client) => a,
                };
                let up = answer.is_ok();
                self.metrics.member(endpoint, up);
                match (&answer, *was_up) {
                    (Err(e), Some(true) | None) => {
                        warn!(member = %endpoint, error = %e, "etcd member does not answer")
                    }
                    (Ok(()), Some(false)) => info!(member = %endpoint, "etcd member answers again"),
                    _ => {}
                }
                *was_up = Some(up);
            }
            if !crate::shutdown::sleep(&stop, EVERY).await {
                return;
            }
        }
    }

    async fn status(&self, endpoint: &str, client: &mut Option<Client>) -> Result<(), EtcdError> {
        if client.is_none() {
            *client = Some(connect_member(&self.config, endpoint).await?);
        }
        let Some(c) = client.as_mut() else {
            return Err(EtcdError::new("no client"));
        };
        self.metrics
            .observe(Op::Status, async {
                match tokio::time::timeout(STATUS_TIMEOUT, c.status()).await {
                    Ok(r) => r.map(drop).map_err(EtcdError::from),
                    Err(_) => Err(EtcdError::new(format!(
                        "no status within {}",
                        humantime::format_duration(STATUS_TIMEOUT)
                    ))),
                }
            })
            .await
    }
}
