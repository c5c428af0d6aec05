//! Stable hashes: the same on every node and every build, so consistent hashing sends a key to
//! the same instance from every cairn of a fleet (std's hasher promises neither).

use std::net::IpAddr;

/// FNV-1a over `bytes`, seeded, then mixed (splitmix64's finalizer) so that close inputs such as
/// consecutive IP addresses land far apart.
pub fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The hash of a client's IP address; an IPv4-mapped IPv6 address hashes as the IPv4 one, so a
/// client keeps its instance whichever way it connected.
pub fn ip(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(v4) => hash(&v4.octets(), 0),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash(&v4.octets(), 0),
            None => hash(&v6.octets(), 0),
        },
    }
}

/// splitmix64's finalizer: every input bit affects every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        // Fixed values: a change here would remap every key of every fleet.
        assert_eq!(hash(b"", 0), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash(b"orders-1", 0), hash(b"orders-1", 0));
        assert_ne!(hash(b"orders-1", 0), hash(b"orders-1", 1));
        let buckets =
            (0..1000u32)
                .map(|i| hash(&i.to_be_bytes(), 0) % 10)
                .fold([0u32; 10], |mut b, k| {
                    b[k as usize] += 1;
                    b
                });
        assert!(
            buckets.iter().all(|n| (60..=140).contains(n)),
            "{buckets:?}"
        );
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip(v4), ip(mapped));
        assert_ne!(ip(v4), ip("10.1.2.4".parse().unwrap()));
    }
}
