//! What the registry tools do: `register`, `deregister`, `list` and `watch`.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::DeleteOptions;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::args::{EtcdArgs, RegisterArgs};
use crate::discovery::{Discovery, DiscoveryMetrics, SharedStream};
use crate::error::Error;
use crate::etcd::{list_prefix, Etcd, EtcdConfig, EtcdError, EtcdMetrics, Kind};
use crate::health::check::{Check, Probe};
use crate::register::{default_id, Registrar, Registration};
use crate::registry::{instance_key, parse_value, service_prefix, split_key, Endpoint};
use crate::text::printable;
use crate::update::{Change, Sink, Update};

/// Connects and authenticates. An etcd that refuses the user is an error at once; an etcd that
/// does not answer is one only when `patient` is false (the foreground commands that wait for
/// etcd retry it).
async fn connect(config: &EtcdConfig, patient: bool) -> Result<Etcd, Error> {
    let mut etcd = Etcd::connect(config, EtcdMetrics::default()).await?;
    match etcd.authenticate().await {
        Ok(()) => Ok(etcd),
        Err(e) if patient && !matches!(e.kind(), Kind::AuthFailed | Kind::PermissionDenied) => {
            Ok(etcd)
        }
        Err(e) => Err(Error::Etcd(e)),
    }
}

/// How often a foreground registration checks whether etcd refuses its user.
const REFUSAL_CHECK: Duration = Duration::from_millis(100);

/// `cairn register`: registers one instance until `shutdown`, then revokes its lease.
///
/// # Errors
/// When the config file given with `-c` is invalid, or etcd refuses the user (bad credentials,
/// no write permission on the prefix). An unreachable etcd is retried, not an error.
pub async fn register(args: RegisterArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let etcd_config = args.etcd.resolve()?;
    let client = connect(&etcd_config, true).await?;
    let etcd = &etcd_config;
    let id = args
        .id
        .map_or_else(|| default_id(&args.addr), |id| id.to_string());
    let mut registration = Registration::new(
        args.service.to_string(),
        id,
        Endpoint::new(args.addr, args.format),
    );
    if let Some(tcp) = args.check_tcp {
        registration = registration.with_check(Check::new(Probe::Tcp(tcp)));
    } else if let Some(url) = args.check_http {
        registration = registration.with_check(Check::new(Probe::Http(url.0)));
    }
    info!(
        key = %instance_key(&etcd.prefix, &registration.service, &registration.id),
        value = %registration.endpoint.encode(),
        ttl = %args.ttl,
        "registering until SIGINT or SIGTERM"
    );
    let handle = Registrar::new(client, &etcd.prefix, args.ttl.0, vec![registration]).spawn();
    let status = handle.status();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REFUSAL_CHECK) => {
                if let Some(why) = status.refusal() {
                    handle.stop().await;
                    return Err(Error::Usage(why));
                }
            }
        }
    }
    handle.stop().await;
    Ok(())
}

/// `cairn deregister`: deletes one instance's key.
///
/// # Errors
/// When etcd cannot be reached or has no such key.
pub async fn deregister(etcd: &EtcdArgs, service: &str, id: &str) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let mut client = connect(&etcd, false).await?.client().clone();
    let key = instance_key(&etcd.prefix, service, id);
    let resp = client
        .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
        .await
        .map_err(|e| Error::EtcdCall {
            what: format!("deleting {key}"),
            source: e.into(),
        })?;
    let Some(prev) = resp.prev_kvs().first() else {
        return Err(Error::Usage(format!(
            "no instance at {key}; `cairn list {service}` shows what is registered"
        )));
    };
    println!("deleted {key}");
    if prev.lease() != 0 {
        eprintln!(
            "note: the key was bound to a lease; if the process that registered it still runs, it puts the key back. Stop that process to deregister for good."
        );
    }
    Ok(())
}

/// `cairn list`: prints the instances in etcd, with the time left on their leases.
///
/// # Errors
/// When etcd cannot be reached.
pub async fn list(etcd: &EtcdArgs, service: Option<&str>) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let conn = connect(&etcd, false).await?;
    let client = conn.client().clone();
    let scope = match service {
        Some(s) => service_prefix(&etcd.prefix, s),
        None => etcd.prefix.to_string(),
    };
    let kvs = list_prefix(&conn, &scope)
        .await
        .map_err(|source| Error::EtcdCall {
            what: format!("listing {scope}"),
            source,
        })?
        .kvs;

    let mut ttls: HashMap<i64, String> = HashMap::new();
    let mut leases = client.lease_client();
    let mut rows = vec![["SERVICE", "ID", "ADDRESS", "FORMAT", "TTL"].map(String::from)];
    for kv in &kvs {
        let Some((service, id)) = split_key(&etcd.prefix, kv.key()) else {
            continue;
        };
        let (address, format) = match parse_value(kv.value()) {
            Ok(e) => (e.addr.to_string(), e.format.to_string()),
            Err(e) => ("-".to_string(), format!("invalid: {e}")),
        };
        let ttl = match kv.lease() {
            0 => "-".to_string(),
            lease => match ttls.get(&lease) {
                Some(t) => t.clone(),
                None => {
                    let t = match leases.time_to_live(lease, None).await {
                        Ok(r) if r.ttl() >= 0 => format!("{}s", r.ttl()),
                        Ok(_) => "expired".to_string(),
                        Err(e) => format!("? ({})", EtcdError::from(e)),
                    };
                    ttls.insert(lease, t.clone());
                    t
                }
            },
        };
        rows.push([
            printable(service).into_owned(),
            printable(id).into_owned(),
            address,
            format,
            ttl,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.len() == 1 {
        eprintln!("no instances under {scope}");
    }
    Ok(())
}

/// `cairn watch`: prints the registry, then every change, until `shutdown`.
///
/// # Errors
/// When the config file given with `-c` is invalid. An unreachable etcd is retried, not an error.
pub async fn watch(
    etcd: &EtcdArgs,
    service: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let client = connect(&etcd, true).await?;
    let printer = Printer { service };
    let stream = SharedStream::spawn(client.clone());
    Discovery::new(
        client,
        &stream,
        &etcd.prefix,
        printer,
        DiscoveryMetrics::default(),
    )
    .run(shutdown)
    .await;
    Ok(())
}

/// Prints discovery updates as lines on stdout.
struct Printer {
    service: Option<String>,
}

impl Printer {
    fn wanted(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
    }
}

impl Sink for Printer {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Reset {
                revision,
                instances,
            } => {
                let shown: Vec<_> = instances.iter().filter(|(s, _)| self.wanted(s)).collect();
                println!("listed at revision {revision}: {} instance(s)", shown.len());
                for (service, i) in shown {
                    println!(
                        "  {}/{}  {}  {}",
                        printable(service),
                        printable(&i.id),
                        i.endpoint.addr,
                        i.endpoint.format
                    );
                }
            }
            // `cairn watch` reads no cache file.
            Update::Cached { .. } => {}
            Update::Changes { changes, .. } => {
                for change in changes {
                    match change {
                        Change::Put {
                            service,
                            instance,
                            revision,
                        } if self.wanted(&service) => println!(
                            "put     {}/{}  {}  {}  (revision {revision})",
                            printable(&service),
                            printable(&instance.id),
                            instance.endpoint.addr,
                            instance.endpoint.format
                        ),
                        Change::Delete {
                            service,
                            id,
                            revision,
                        } if self.wanted(&service) => {
                            println!(
                                "delete  {}/{}  (revision {revision})",
                                printable(&service),
                                printable(&id)
                            )
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
