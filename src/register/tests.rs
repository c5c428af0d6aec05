//! The registrar's state machine against the fake, on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

use super::fake::{pair, Call, FakeEtcd, KeepAliveEnd, WatchEnd};
use super::*;
use crate::backoff::{RETRY_BASE, RETRY_MAX};
use crate::health::check::{Check, Probe};
use crate::registry::{Endpoint, Format};

const TTL: Duration = Duration::from_secs(3);

fn registrations() -> Vec<Registration> {
    ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Registration::new(
                "svc",
                *id,
                Endpoint::new(format!("10.0.0.{i}:80").parse().unwrap(), Format::Plain),
            )
        })
        .collect()
}

fn start() -> (FakeEtcd, Handle) {
    let (keys, etcd) = pair();
    let handle = Registrar::with_keys(keys, "/s/", TTL, registrations()).spawn();
    (etcd, handle)
}

/// Expects a whole session on `lease`: keepalive open, keys written at revision 10, key watch.
async fn session(etcd: &mut FakeEtcd, lease: i64) -> (KeepAliveEnd, WatchEnd) {
    let keepalive = etcd.keep_alive(lease).await;
    let written = etcd.write(lease, 10).await;
    assert_eq!(
        written,
        [
            ("/s/svc/a".to_string(), "10.0.0.0:80".to_string()),
            ("/s/svc/b".to_string(), "10.0.0.1:80".to_string())
        ]
    );
    let (keys, start, feed) = etcd.watch().await;
    assert_eq!(keys, ["/s/svc/a", "/s/svc/b"]);
    assert_eq!(start, 11, "the watch starts right after the writes");
    (keepalive, feed)
}

fn deleted(key: &str) -> KeyEvent {
    KeyEvent {
        key: key.as_bytes().to_vec(),
        value: Vec::new(),
        lease: 0,
        deleted: true,
    }
}

#[tokio::test(start_paused = true)]
async fn registers_under_one_lease_and_pings_every_third_of_the_ttl() {
    let (mut etcd, handle) = start();
    assert_eq!(etcd.grant(1).await, 3, "the lease is granted with the ttl");
    let (mut keepalive, _watch) = session(&mut etcd, 1).await;
    let status = handle.status();
    assert!(status.is_registered(0) && status.is_registered(1));
    assert_eq!(status.lease_grants.get(), 1);
    let began = Instant::now();
    for n in 1..=4u32 {
        keepalive.pings.recv().await.expect("a ping");
        assert_eq!(began.elapsed(), TTL / 3 * n);
        keepalive.answers.send(Ok(3)).unwrap();
    }
    assert_eq!(status.lease_grants.get(), 1);
    handle_stop(etcd, handle, 1).await;
}

/// Stops the registrar and expects it to revoke `lease`.
async fn handle_stop(mut etcd: FakeEtcd, handle: Handle, lease: i64) {
    let stopping = tokio::spawn(handle.stop());
    revocation(&mut etcd, lease).await;
    stopping.await.unwrap();
}

/// Expects `lease` to be revoked, and confirms it.
async fn revocation(etcd: &mut FakeEtcd, lease: i64) {
    match etcd.call().await {
        Call::Revoke(l, r) => {
            assert_eq!(l, lease);
            let _ = r.send(Ok(()));
        }
        other => panic!("expected lease {lease} to be revoked, got {other:?}"),
    }
}

/// Breaks the keepalive stream as a killed member does.
fn break_stream(keepalive: &KeepAliveEnd) {
    keepalive
        .answers
        .send(Err(EtcdError::new("h2 protocol error")))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_is_granted_again_and_the_keys_written_under_it() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (keepalive, _watch) = session(&mut etcd, 1).await;
    // etcd answers a keepalive with no TTL left: the lease expired or was revoked.
    keepalive.answers.send(Ok(0)).unwrap();
    let lost = Instant::now();
    etcd.grant(2).await;
    assert!(
        lost.elapsed() <= RETRY_BASE,
        "re-granted after {:?}",
        lost.elapsed()
    );
    let (_keepalive, _watch) = session(&mut etcd, 2).await;
    let status = handle.status();
    assert_eq!(status.lease_grants.get(), 2);
    assert!(status.is_registered(0));
    handle_stop(etcd, handle, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_broken_keepalive_reconnects_on_the_same_lease() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (keepalive, _watch) = session(&mut etcd, 1).await;
    break_stream(&keepalive);
    // No grant: the lease still lives, so the session resumes on it.
    let (keepalive2, _watch) = session(&mut etcd, 1).await;
    assert_eq!(handle.status().lease_grants.get(), 1);

    // A lease that expired while the connection was down is found gone on reopening.
    drop(keepalive2);
    match etcd.call().await {
        Call::KeepAlive(1, r) => {
            let _ = r.send(Err(EtcdError::lease_gone("lease not found")));
        }
        other => panic!("expected a keepalive for 1, got {other:?}"),
    }
    etcd.grant(2).await;
    let (_keepalive, _watch) = session(&mut etcd, 2).await;
    handle_stop(etcd, handle, 2).await;
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_keepalive_ends_the_session_after_the_ttl() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (mut keepalive, _watch) = session(&mut etcd, 1).await;
    let began = Instant::now();
    for _ in 0..3 {
        keepalive.pings.recv().await.expect("a ping");
    }
    // The fourth tick finds no answer for longer than the ttl and reconnects.
    let (_keepalive, _watch) = session(&mut etcd, 1).await;
    let waited = began.elapsed();
    assert!(
        waited >= TTL + TTL / 3 && waited <= TTL + TTL / 3 + RETRY_BASE,
        "reconnected after {waited:?}"
    );
    handle_stop(etcd, handle, 1).await;
}

#[tokio::test(start_paused = true)]
async fn deleted_and_overwritten_keys_are_put_back_at_most_once_a_second() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (keepalive, watch) = session(&mut etcd, 1).await;
    keepalive.answers.send(Ok(3)).unwrap();

    watch.send(Ok(vec![deleted("/s/svc/a")])).unwrap();
    let first = Instant::now();
    assert_eq!(etcd.put(1, Ok(())).await, "/s/svc/a");
    assert_eq!(
        first.elapsed(),
        Duration::ZERO,
        "the first repair is immediate"
    );

    // cairn's own put comes back through the watch: nothing to repair.
    watch
        .send(Ok(vec![KeyEvent {
            key: b"/s/svc/a".to_vec(),
            value: b"10.0.0.0:80".to_vec(),
            lease: 1,
            deleted: false,
        }]))
        .unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    // Someone overwrites b: repaired, but not before a second has passed since the last repair.
    watch
        .send(Ok(vec![KeyEvent {
            key: b"/s/svc/b".to_vec(),
            value: b"10.9.9.9:1".to_vec(),
            lease: 0,
            deleted: false,
        }]))
        .unwrap();
    assert_eq!(etcd.put(1, Ok(())).await, "/s/svc/b");
    assert_eq!(first.elapsed(), REPAIR_SPACING);

    // A repair that finds the lease gone starts over with a new lease.
    watch.send(Ok(vec![deleted("/s/svc/b")])).unwrap();
    etcd.put(
        1,
        Err(EtcdError::lease_gone(
            "etcdserver: requested lease not found",
        )),
    )
    .await;
    assert_eq!(handle.status().repairs.get(), 2);
    etcd.grant(2).await;
    let (_keepalive, _watch) = session(&mut etcd, 2).await;
    handle_stop(etcd, handle, 2).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_etcd_is_retried_with_backoff_until_it_answers() {
    let (mut etcd, handle) = start();
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    for _ in 0..6 {
        match etcd.call().await {
            Call::Grant(_, r) => {
                let _ = r.send(Err(EtcdError::new("connection refused")));
            }
            other => panic!("expected a grant, got {other:?}"),
        }
        gaps.push(last.elapsed());
        last = Instant::now();
    }
    etcd.grant(1).await;
    let (_keepalive, _watch) = session(&mut etcd, 1).await;
    assert_eq!(gaps[0], Duration::ZERO);
    assert!(
        gaps[1] >= RETRY_BASE / 2 && gaps[1] <= RETRY_BASE,
        "{gaps:?}"
    );
    assert!(
        gaps.windows(2).skip(1).all(|w| w[1] >= w[0] / 2),
        "{gaps:?}"
    );
    assert!(gaps.iter().all(|g| *g <= RETRY_MAX), "{gaps:?}");
    assert_eq!(handle.status().lease_grants.get(), 1);
    handle_stop(etcd, handle, 1).await;
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_check_has_not_passed_is_not_written_and_its_old_key_removed() {
    let (keys, mut etcd) = pair();
    let mut regs = registrations();
    regs[1].check = Some(Check::new(Probe::Exec(vec!["false".into()])));
    let handle = Registrar::with_keys(keys, "/s/", TTL, regs).spawn();
    etcd.grant(1).await;
    let _keepalive = etcd.keep_alive(1).await;
    assert_eq!(
        etcd.write(1, 10).await,
        [("/s/svc/a".to_string(), "10.0.0.0:80".to_string())],
        "only the instance without a check is written"
    );
    match etcd.call().await {
        Call::Remove(1, key, r) => {
            assert_eq!(key, "/s/svc/b", "a key left by an earlier run is removed");
            let _ = r.send(Ok(()));
        }
        other => panic!("expected the unhealthy key to be removed, got {other:?}"),
    }
    let (keys, _, _watch) = etcd.watch().await;
    assert_eq!(keys, ["/s/svc/a", "/s/svc/b"], "both keys are watched");
    let status = handle.status();
    assert!(status.is_registered(0) && !status.is_registered(1));
    handle_stop(etcd, handle, 1).await;
}

/// Expects the removal of `key` under `lease` and confirms it.
async fn removal(etcd: &mut FakeEtcd, lease: i64, key: &str) {
    match etcd.call().await {
        Call::Remove(l, k, r) => {
            assert_eq!((l, k.as_str()), (lease, key));
            let _ = r.send(Ok(()));
        }
        other => panic!("expected {key} to be removed under {lease}, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_rewrites_the_keys_under_the_same_lease_and_deletes_the_removed_ones() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (_keepalive, _watch) = session(&mut etcd, 1).await;
    // b is removed, a's address changes, c is new.
    let mut next = registrations();
    next[0].endpoint = Endpoint::new("10.0.0.9:80".parse().unwrap(), Format::Plain);
    next[1] = Registration::new(
        "svc",
        "c",
        Endpoint::new("10.0.0.2:80".parse().unwrap(), Format::Plain),
    );
    handle.update(TTL, next);
    // The same lease: no grant, a new keepalive stream on lease 1.
    let _keepalive = etcd.keep_alive(1).await;
    assert_eq!(
        etcd.write(1, 20).await,
        [
            ("/s/svc/a".to_string(), "10.0.0.9:80".to_string()),
            ("/s/svc/c".to_string(), "10.0.0.2:80".to_string())
        ]
    );
    removal(&mut etcd, 1, "/s/svc/b").await;
    let (keys, start, _watch) = etcd.watch().await;
    assert_eq!(
        keys,
        ["/s/svc/a", "/s/svc/c"],
        "exactly the owned keys are watched"
    );
    assert_eq!(start, 21);
    let status = handle.status();
    assert_eq!(status.labels(), ["svc/a", "svc/c"]);
    assert!(status.is_registered(0) && status.is_registered(1));
    assert_eq!(status.lease_grants.get(), 1);
    handle_stop(etcd, handle, 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_the_ttl_moves_the_keys_to_a_new_lease_and_revokes_the_old() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (_keepalive, _watch) = session(&mut etcd, 1).await;
    handle.update(Duration::from_secs(6), registrations());
    assert_eq!(etcd.grant(2).await, 6);
    let (_keepalive, _watch) = session(&mut etcd, 2).await;
    revocation(&mut etcd, 1).await;
    handle_stop(etcd, handle, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_while_etcd_is_away_is_applied_when_it_returns() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (keepalive, _watch) = session(&mut etcd, 1).await;
    break_stream(&keepalive);
    // Reconnecting fails, then the reload arrives while the registrar waits.
    match etcd.call().await {
        Call::KeepAlive(1, r) => {
            let _ = r.send(Err(EtcdError::new("connection refused")));
        }
        other => panic!("expected a keepalive, got {other:?}"),
    }
    handle.update(TTL, registrations()[..1].to_vec());
    let _keepalive = etcd.keep_alive(1).await;
    assert_eq!(
        etcd.write(1, 30).await,
        [("/s/svc/a".to_string(), "10.0.0.0:80".to_string())]
    );
    removal(&mut etcd, 1, "/s/svc/b").await;
    let (keys, _, _watch) = etcd.watch().await;
    assert_eq!(keys, ["/s/svc/a"]);
    handle_stop(etcd, handle, 1).await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_registrar_leaves_its_lease_to_expire() {
    let (mut etcd, handle) = start();
    etcd.grant(1).await;
    let (_keepalive, _watch) = session(&mut etcd, 1).await;
    let abandoning = tokio::spawn(handle.abandon());
    abandoning.await.unwrap();
    // No revoke: the registrar ended without another call.
    assert!(etcd.try_call().is_none());
}
