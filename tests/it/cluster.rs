//! A three-member etcd cluster: cairn, given every endpoint, misses no change while each member
//! in turn is killed and brought back.

use std::time::Duration;

use crate::support::cairn::{Cairn, ADMIN};
use crate::support::etcd::Cluster;
use crate::support::eventually;
use crate::support::patient;
use crate::support::upstream::{greeting, Tagged};

const SOON: Duration = Duration::from_secs(15);

/// Writes through member `i`, retrying while the cluster elects a new leader (etcd answers
/// Unavailable meanwhile, and clients are expected to retry).
async fn write(cluster: &Cluster, i: usize, key: &str, value: Option<&str>) {
    let mut kv = cluster.client(i).await;
    let start = std::time::Instant::now();
    loop {
        let done = match value {
            Some(v) => kv.put(key, v, None).await.map(drop),
            None => kv.delete(key, None).await.map(drop),
        };
        match done {
            Ok(()) => return,
            Err(e) if start.elapsed() < patient(SOON) => {
                eprintln!("write to {key} through member {i} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write to {key} through member {i} kept failing: {e}"),
        }
    }
}

#[tokio::test]
async fn no_change_is_missed_while_each_member_in_turn_dies() {
    let mut cluster = Cluster::start().await;
    let up = Tagged::start("up").await;
    let endpoints: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let config = format!(
        "[etcd]\nendpoints = [{}]\n{ADMIN}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n",
        endpoints.join(", "),
    );
    let addr = up.addr.to_string();
    write(&cluster, 0, "/services/s/i0", Some(&addr)).await;
    let cairn = Cairn::start(&config).await;
    cairn.wait_instances("s", &["i0"], SOON).await;

    let mut want = vec!["i0".to_string()];
    for dead in 0..3 {
        cluster.kill(dead);
        // Changes made through a surviving member while `dead` is down.
        let alive = (dead + 1) % 3;
        let id = format!("i{}", dead + 1);
        write(&cluster, alive, &format!("/services/s/{id}"), Some(&addr)).await;
        write(
            &cluster,
            alive,
            &format!("/services/s/{}", want.remove(0)),
            None,
        )
        .await;
        want.push(id);
        let ids: Vec<&str> = want.iter().map(String::as_str).collect();
        cairn.wait_instances("s", &ids, SOON).await;
        assert_eq!(
            greeting(cairn.listen(0)).await.as_deref(),
            Some("up"),
            "routing stopped with member {dead} down"
        );
        cluster.restart(dead).await;
    }
    // A change after every member has been down once still arrives.
    write(&cluster, 2, "/services/s/last", Some(&addr)).await;
    cairn.wait_instances("s", &["i3", "last"], SOON).await;
}

/// Writes `changes` puts and deletes of `/services/s/churn-*`, each retried through any member
/// until it succeeds, pausing between them so the faults land in the middle of the churn.
async fn churn(endpoints: Vec<String>, addr: String, changes: usize) -> usize {
    let mut retries = 0;
    for n in 0..changes {
        let key = format!("/services/s/churn-{}", n % 20);
        let start = std::time::Instant::now();
        loop {
            let ep = &endpoints[(n + retries) % endpoints.len()];
            let done = async {
                let mut kv = etcd_client::Client::connect([ep.as_str()], None).await?;
                if n % 3 == 2 {
                    kv.delete(key.as_str(), None).await.map(drop)
                } else {
                    kv.put(key.as_str(), addr.as_str(), None).await.map(drop)
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), done).await {
                Ok(Ok(())) => break,
                _ if start.elapsed() < patient(Duration::from_secs(60)) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!("change {n} could not be written for a minute"),
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    retries
}

#[tokio::test]
async fn leader_loss_freezes_and_lost_quorum_fail_no_request_and_miss_no_change() {
    let mut cluster = Cluster::start().await;
    let up = Tagged::start("up").await;
    let addr = up.addr.to_string();
    let endpoints = cluster.endpoints();
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let config = format!(
        "[etcd]\nendpoints = [{}]\n{ADMIN}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[register]]\nservice = \"reg\"\nid = \"node\"\naddr = \"10.0.0.1:80\"\nttl = \"3s\"\n",
        quoted.join(", "),
    );
    write(&cluster, 0, "/services/s/alive", Some(&addr)).await;
    let cairn = Cairn::start(&config).await;
    cairn.wait_instances("s", &["alive"], SOON).await;
    let listen = cairn.listen(0);

    // A client through cairn, all along.
    let stop = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.is_cancelled() {
                match greeting(listen).await.as_deref() {
                    Some("up") => ok += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }
    });
    let writer = tokio::spawn(churn(endpoints.clone(), addr.clone(), 1000));

    // The leader dies and comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader).await;
    // The new leader and a follower freeze (quorum lost while they are stopped), then thaw.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader().await.expect("a leader");
    let follower = (leader + 1) % 3;
    cluster.signal(leader, "STOP");
    cluster.signal(follower, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.signal(leader, "CONT");
    cluster.signal(follower, "CONT");
    // Two members down for 10 s: no quorum, so no write and no lease renewal; then back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (leader, (leader + 2) % 3);
    cluster.kill(a);
    cluster.kill(b);
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.restart(a).await;
    cluster.restart(b).await;

    // The registration's lease may have expired during the quorum loss: it is back, under a
    // live lease, within seconds.
    let mut kv = cluster.client(0).await;
    eventually(SOON, "the registration is back under a live lease", || {
        let mut kv = kv.clone();
        async move {
            let r = kv.get("/services/reg/node", None).await.ok()?;
            let lease = r.kvs().first()?.lease();
            let ttl = kv.lease_time_to_live(lease, None).await.ok()?.ttl();
            (ttl > 0).then_some(())
        }
    })
    .await;

    let retries = writer.await.expect("the writer");
    eprintln!("1000 changes written, {retries} writes retried during the faults");
    // Every change is seen: cairn's snapshot equals etcd's keys.
    let theirs = kv
        .get(
            "/services/s/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("reading etcd");
    let mut want: Vec<String> = theirs
        .kvs()
        .iter()
        .map(|kv| {
            kv.key_str()
                .unwrap_or_default()
                .trim_start_matches("/services/s/")
                .to_string()
        })
        .collect();
    want.sort();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    cairn.wait_instances("s", &want, SOON).await;

    stop.cancel();
    let (ok, failed) = client.await.expect("the client");
    assert!(ok > 100, "the client hardly ran: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}
