use std::collections::HashMap;

use super::*;
use crate::balance::Balance;
use crate::snapshot::Outlier;
use crate::snapshot::Verdict;

fn inst(id: &str, addr: &str) -> Arc<Instance> {
    Instance::plain(id, addr)
}

fn placed(id: &str, addr: &str, weight: u32, zone: Option<&str>) -> Arc<Instance> {
    let mut i = Instance::clone(&inst(id, addr));
    i.endpoint.weight = weight;
    i.endpoint.zone = zone.map(Into::into);
    Arc::new(i)
}

fn cell(n: usize) -> ServiceCell {
    let cell = ServiceCell::default();
    assert!(cell.publish(
        (0..n)
            .map(|i| inst(&format!("i{i}"), &format!("10.0.0.{i}:80")))
            .collect(),
    ));
    cell
}

fn addr(a: &Addr) -> String {
    a.to_string()
}

fn tally(c: &ServiceCell, picks: usize) -> HashMap<String, usize> {
    let mut served = HashMap::new();
    for _ in 0..picks {
        *served
            .entry(addr(&c.pick(None, 0).unwrap().addr))
            .or_default() += 1;
    }
    served
}

#[test]
fn equal_weights_keep_the_exact_rotation() {
    let empty = ServiceCell::default();
    assert!(empty.pick(None, 0).is_none());
    let c = cell(3);
    let firsts: Vec<String> = (0..6)
        .map(|_| addr(&c.pick(None, 0).unwrap().addr))
        .collect();
    assert_eq!(
        firsts,
        ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"].repeat(2)
    );
}

#[test]
fn picks_return_every_kind_of_address_whole() {
    // A pick keeps IPv4 addresses in its own entries and reads the others from the instance:
    // every kind must come back as it was registered.
    let c = ServiceCell::default();
    let addrs = ["10.0.0.7:8080", "[fd00::7]:443", "db-1.internal:5432"];
    assert!(c.publish(
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| inst(&format!("i{i}"), a))
            .collect()
    ));
    for balance in [
        Balance::RoundRobin,
        Balance::Random,
        Balance::LeastRequest,
        Balance::Ewma,
    ] {
        c.configure(Policy {
            balance,
            ..Policy::default()
        });
        let mut seen: Vec<String> = (0..200)
            .map(|_| {
                let p = c.pick(None, 0).unwrap();
                assert_eq!(p.addr, c.load().instances()[p.index].endpoint.addr);
                addr(&p.addr)
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen,
            ["10.0.0.7:8080", "[fd00::7]:443", "db-1.internal:5432"],
            "{balance:?}"
        );
    }
}

#[test]
fn a_removed_instance_keeps_its_slot_while_a_request_holds_it() {
    let c = ServiceCell::default();
    assert!(c.publish(vec![inst("a", "10.0.0.1:80")]));
    let a = Arc::clone(&c.load().states()[0]);
    a.latency().observe(40_000_000, 0);
    let guard = a.begin();
    drop(a);
    // "a" leaves while its request is in flight; "b" arrives: its slot must not be a's.
    assert!(c.publish(vec![inst("b", "10.0.0.2:80")]));
    let b = Arc::clone(&c.load().states()[0]);
    assert_eq!(b.inflight(), 0);
    assert_eq!(b.latency().sampled_ns(), None);
    b.latency().observe(1_000_000, 0);
    drop(guard);
    // Now a's slot is free and reset; the next newcomer gets it clean, b keeps its own.
    assert!(c.publish(vec![inst("b", "10.0.0.2:80"), inst("c", "10.0.0.3:80")]));
    let states = c.load().states().to_vec();
    assert_eq!(states[1].inflight(), 0);
    assert_eq!(states[1].latency().sampled_ns(), None);
    assert_eq!(states[0].latency().sampled_ns(), Some(1_000_000.0));
}

#[test]
fn retries_visit_every_other_instance_once() {
    let c = cell(4);
    for _ in 0..8 {
        let p = c.pick(None, 0).unwrap();
        let mut seen: Vec<String> = c.retries(&p).map(|(a, _)| addr(&a)).collect();
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(&addr(&p.addr)), "{seen:?}");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
    }
}

#[test]
fn a_dead_instances_share_is_split_evenly() {
    let c = cell(3);
    let dead = addr(c.load().addr(0));
    let mut served = HashMap::<String, usize>::new();
    for _ in 0..300 {
        let p = c.pick(None, 0).unwrap();
        let to = if addr(&p.addr) == dead {
            c.retries(&p).next().unwrap().0
        } else {
            p.addr
        };
        *served.entry(addr(&to)).or_default() += 1;
    }
    assert_eq!(served.get(&dead), None);
    assert_eq!(served.values().copied().collect::<Vec<_>>(), [150, 150]);
}

#[test]
fn retries_after_a_swap_skip_the_failed_address_and_removed_instances() {
    let c = cell(3);
    let p = c.pick(None, 0).unwrap();
    assert_eq!(addr(&p.addr), "10.0.0.0:80");
    // The failed instance moved to another index; one more instance came.
    assert!(c.publish(vec![
        inst("a", "10.0.0.9:80"),
        inst("i0", "10.0.0.0:80"),
        inst("i2", "10.0.0.2:80"),
    ]));
    let mut rest: Vec<String> = c.retries(&p).map(|(a, _)| addr(&a)).collect();
    rest.sort();
    assert_eq!(rest, ["10.0.0.2:80", "10.0.0.9:80"]);
    // Every instance gone: nothing to retry.
    assert!(c.publish(Vec::new()));
    assert_eq!(c.retries(&p).count(), 0);
    assert!(c.retries(&p).service_is_empty());
    // Only the failed one left: nothing else to try.
    assert!(c.publish(vec![inst("i0", "10.0.0.0:80")]));
    assert_eq!(c.retries(&p).count(), 0);
}

#[test]
fn weights_shape_the_rotation_and_zero_gets_nothing() {
    let c = ServiceCell::default();
    assert!(c.publish(vec![
        placed("a", "10.0.0.1:80", 5, None),
        placed("b", "10.0.0.2:80", 1, None),
        placed("c", "10.0.0.3:80", 1, None),
        placed("d", "10.0.0.4:80", 0, None),
    ]));
    let order: String = (0..7)
        .map(|_| match addr(&c.pick(None, 0).unwrap().addr).as_str() {
            "10.0.0.1:80" => 'a',
            "10.0.0.2:80" => 'b',
            "10.0.0.3:80" => 'c',
            other => panic!("{other} has weight 0"),
        })
        .collect();
    assert_eq!(order, "aabacaa", "nginx's smooth sequence");
    assert_eq!(c.load().usable(), 3);
}

#[test]
fn an_ejected_instance_is_skipped_until_it_expires_then_probation_decides() {
    let c = cell(4);
    let victim = Arc::clone(&c.load().states()[1]);
    let until = c
        .eject(&victim, 1_000, 1.0)
        .expect("one of four is ejectable");
    assert_eq!(until, 31_000);
    assert_eq!(c.load().usable(), 3);
    assert!(!c.load().is_usable(1));
    let served = tally(&c, 300);
    assert_eq!(served.get("10.0.0.1:80"), None, "{served:?}");
    // A failed pick does not retry the ejected instance either.
    let p = c.pick(None, 0).unwrap();
    assert!(c.retries(&p).all(|(a, _)| addr(&a) != "10.0.0.1:80"));
    assert_eq!(c.expire(30_999), 0);
    assert_eq!(c.expire(31_000), 1);
    assert_eq!(c.load().usable(), 4);
    assert!(victim.on_probation());
    // One failure on probation ejects again, longer.
    assert_eq!(victim.connect_failed(&Outlier::default()), Verdict::Eject);
    assert_eq!(c.eject(&victim, 32_000, 1.0), Some(92_000));
}

#[test]
fn ejection_stops_at_the_percentage_and_never_blocks_the_first() {
    let c = cell(4);
    let states = c.load().states().to_vec();
    assert!(c.eject(&states[0], 0, 1.0).is_some());
    assert!(c.eject(&states[1], 0, 1.0).is_some());
    assert_eq!(c.eject(&states[2], 0, 1.0), None, "50% of 4 is 2");
    assert_eq!(c.load().usable(), 2);
    let lone = cell(1);
    let only = Arc::clone(&lone.load().states()[0]);
    assert!(
        lone.eject(&only, 0, 1.0).is_some(),
        "one is always ejectable"
    );
}

#[test]
fn fewer_than_half_usable_is_a_panic_and_every_instance_is_picked() {
    let c = cell(4);
    c.configure(Policy {
        outlier: Outlier {
            max_ejection_percent: 100,
            ..Outlier::default()
        },
        ..Policy::default()
    });
    let states = c.load().states().to_vec();
    for s in &states[..2] {
        c.eject(s, 0, 1.0).unwrap();
    }
    assert!(!c.load().in_panic(), "two of four usable is half");
    assert_eq!(c.load().usable(), 2);
    c.eject(&states[2], 0, 1.0).unwrap();
    assert!(c.load().in_panic());
    assert_eq!(c.load().usable(), 4);
    assert_eq!(tally(&c, 400).len(), 4);
}

#[test]
fn states_survive_a_republish_but_not_a_removal_or_a_move() {
    let c = cell(2);
    let s0 = Arc::clone(&c.load().states()[0]);
    c.eject(&s0, 0, 1.0).unwrap();
    assert!(c.publish(vec![inst("i0", "10.0.0.0:80"), inst("i1", "10.0.0.1:80")]));
    assert!(Arc::ptr_eq(&s0, &c.load().states()[0]));
    assert_eq!(
        c.load().usable(),
        1,
        "still ejected after an unrelated change"
    );
    // Moved to a new address: a new instance, healthy.
    assert!(c.publish(vec![inst("i0", "10.0.0.5:80"), inst("i1", "10.0.0.1:80")]));
    assert!(!Arc::ptr_eq(&s0, &c.load().states()[0]));
    assert_eq!(c.load().usable(), 2);
    // Removed, then re-added: fresh.
    let s1 = Arc::clone(&c.load().states()[1]);
    c.eject(&s1, 0, 1.0).unwrap();
    assert!(c.publish(vec![inst("i0", "10.0.0.5:80")]));
    assert!(c.publish(vec![inst("i0", "10.0.0.5:80"), inst("i1", "10.0.0.1:80")]));
    assert_eq!(c.load().usable(), 2);
}

#[test]
fn zones_prefer_local_instances_while_enough_are_usable() {
    let c = ServiceCell::default();
    c.configure(Policy {
        zone: Some("eu-1a".into()),
        ..Policy::default()
    });
    assert!(c.publish(vec![
        placed("a", "10.0.0.1:80", 1, Some("eu-1a")),
        placed("b", "10.0.0.2:80", 1, Some("eu-1a")),
        placed("c", "10.0.0.3:80", 1, Some("eu-1b")),
        placed("d", "10.0.0.4:80", 1, None),
    ]));
    let served = tally(&c, 100);
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(served.contains_key("10.0.0.1:80") && served.contains_key("10.0.0.2:80"));
    // One local left usable: below min_local, every zone is used.
    let a = Arc::clone(&c.load().states()[0]);
    c.eject(&a, 0, 1.0).unwrap();
    assert_eq!(tally(&c, 99).len(), 3);
    // All instances local: used even when fewer than min_local.
    assert!(c.publish(vec![placed("a", "10.0.0.1:80", 1, Some("eu-1a"))]));
    assert_eq!(c.pick(None, 0).unwrap().addr.to_string(), "10.0.0.1:80");
}

#[test]
fn failing_checks_take_an_instance_out_under_the_same_panic_rule() {
    let c = cell(3);
    let s = Arc::clone(&c.load().states()[2]);
    for _ in 0..3 {
        s.checked(false, 2, 3);
    }
    c.rebuild();
    assert_eq!(c.load().usable(), 2);
    assert!(!c.load().is_usable(2));
    for s in c.load().states() {
        s.checked(false, 1, 1);
    }
    c.rebuild();
    assert!(c.load().in_panic());
    assert_eq!(c.load().usable(), 3);
}

#[test]
fn the_hash_policy_sends_a_key_to_one_instance_and_falls_back_without_one() {
    let c = cell(5);
    c.configure(Policy {
        balance: Balance::Hash,
        ..Policy::default()
    });
    for key in 0..100u64 {
        let first = c.pick(Some(key), 0).unwrap().addr;
        for _ in 0..3 {
            assert_eq!(c.pick(Some(key), 0).unwrap().addr, first);
        }
    }
    assert_eq!(tally(&c, 10).len(), 5, "no key: round robin");
}
