//! A three-member etcd cluster: cairn, given every endpoint, misses no change while each member
//! in turn is killed and brought back.

use std::time::Duration;

use crate::support::cairn::{Cairn, ADMIN};
use crate::support::etcd::Cluster;
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
