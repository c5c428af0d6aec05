//! The live status page, rendered by a real headless Chromium against a running cairn.

use std::time::Duration;

use crate::support::browser::dump_dom;
use crate::support::cairn::{config, Cairn, SCOPE_ALL};
use crate::support::etcd::Etcd;
use crate::support::upstream::{greeting, Tagged};
use crate::support::{eventually, free_port};

const SOON: Duration = Duration::from_secs(10);

/// The `data-state` of instance `service/id` in a dumped DOM.
fn state_in(dom: &str, service: &str, id: &str) -> Option<String> {
    let marker = format!("data-instance=\"{service}/{id}\" data-state=\"");
    let at = dom.find(&marker)? + marker.len();
    Some(dom[at..].split('"').next()?.to_string())
}

#[tokio::test]
async fn the_status_page_shows_instances_as_they_are_added_and_ejected() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Tagged::start("a").await;
    let b = Tagged::start("b").await;
    kv.put("/services/svc/a", a.addr.to_string(), None)
        .await
        .unwrap();
    kv.put("/services/svc/b", b.addr.to_string(), None)
        .await
        .unwrap();
    // Nobody listens there: connects are refused, and the instance is ejected.
    kv.put(
        "/services/svc/x",
        format!(
            "{{\"addr\":\"127.0.0.1:{}\",\"zone\":\"eu-1a\"}}",
            free_port()
        ),
        None,
    )
    .await
    .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["svc"], "")).await;
    cairn.wait_instances("svc", &["a", "b", "x"], SOON).await;
    eventually(SOON, "the refusing instance is ejected", || async {
        greeting(cairn.listen(0)).await;
        let doc = cairn.services().await;
        let x = doc["services"]["svc"]["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == "x")?
            .clone();
        (x["state"] == "ejected").then_some(())
    })
    .await;

    let url = format!("http://{}/", cairn.admin);
    let dom = dump_dom(&url, 3000);
    assert_eq!(
        state_in(&dom, "svc", "x").as_deref(),
        Some("ejected"),
        "{dom}"
    );
    assert_eq!(
        state_in(&dom, "svc", "a").as_deref(),
        Some("healthy"),
        "{dom}"
    );
    assert!(dom.contains("id=\"etcd-state\">connected<"), "{dom}");
    assert!(
        dom.contains(&cairn.listen(0).to_string()),
        "the listener is listed: {dom}"
    );
    assert!(dom.contains("eu-1a"), "the zone is shown: {dom}");

    // An instance added in etcd appears on the next render.
    let c = Tagged::start("c").await;
    kv.put("/services/svc/c", c.addr.to_string(), None)
        .await
        .unwrap();
    cairn
        .wait_instances("svc", &["a", "b", "c", "x"], SOON)
        .await;
    let dom = dump_dom(&url, 3000);
    assert_eq!(
        state_in(&dom, "svc", "c").as_deref(),
        Some("healthy"),
        "{dom}"
    );
}

#[tokio::test]
async fn the_status_page_lists_two_hundred_services_and_escapes_what_it_shows() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for s in 0..200 {
        kv.put(format!("/services/svc-{s:03}/i1"), "10.0.0.1:80", None)
            .await
            .unwrap();
    }
    // A key crafted to inject markup is shown as text.
    kv.put(
        "/services/<img src=x onerror=alert(1)>/i1",
        "10.0.0.1:80",
        None,
    )
    .await
    .unwrap();
    let cairn = Cairn::start(&format!("{}{SCOPE_ALL}", config(&etcd.endpoint(), &[], ""))).await;
    cairn.wait_instances("svc-199", &["i1"], SOON).await;
    let dom = dump_dom(&format!("http://{}/", cairn.admin), 3000);
    assert_eq!(dom.matches("<details data-service=").count(), 201, "{dom}");
    assert!(
        !dom.contains("<img"),
        "markup from the registry was rendered: {dom}"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    // With that many services, only troubled or opened ones carry their instances.
    assert!(!dom.contains("data-instance=\"svc-000/i1\""), "{dom}");
}
