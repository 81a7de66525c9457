//! Consistent hashing as Google's Maglev does it (Eisenbud et al., NSDI 2016): a lookup table of
//! prime size M ≥ 100·n filled from each backend's own permutation of the slots (an offset and a
//! skip from two hashes of its address), in turns, so each backend holds an equal share (or one in
//! proportion to its weight) and a key is one table read. Built when the backend list or its
//! weights change, never per pick.
//!
//! The table is built over every configured backend; one that may not take a request is skipped
//! at lookup, its keys going to the owner of the next slot of the key's probe sequence. So when
//! a backend leaves, exactly its keys move (≈ 1/n, spread evenly over the others), the others'
//! keys stay where they were — a rebuilt table would move a few % more — and all come back when
//! it returns. A retry walks on the same way past the backends already tried.
//!
//! Hashes are FNV-1a with a final mix, fixed, so two balancers (or one after a restart) map a
//! key to the same backend.

use std::net::{IpAddr, SocketAddr};

/// Probes of a key's sequence before the lookup walks the whole table.
const PROBES: u64 = 64;

/// The table size for up to 655 backends: a prime ≥ 100 per backend, as the paper advises.
const SMALL_TABLE: usize = 65_537;

/// A Maglev lookup table: slot → backend index.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Maglev {
    slots: Box<[u32]>,
}

impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Maglev({} slots)", self.slots.len())
    }
}

impl Maglev {
    /// The table over `(address, weight)` of every backend, in set order; `None` when the list
    /// is empty or no weight is positive.
    pub(crate) fn new(backends: &[(SocketAddr, u32)]) -> Option<Self> {
        let max_weight = backends.iter().map(|b| b.1).max().filter(|&w| w > 0)?;
        let m = table_size(backends.len());
        // Each backend's preference list is offset, offset + skip, offset + 2·skip, ... (mod m):
        // a permutation of the slots because m is prime and 0 < skip < m.
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|(addr, _)| {
                let (h1, h2) = (hash_addr(addr, 0x6d61_676c), hash_addr(addr, 0x6576_3031));
                (h1 % m as u64, h2 % (m as u64 - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; backends.len()];
        let mut claimed = vec![0u64; backends.len()];
        let mut slots = vec![u32::MAX; m];
        let mut filled = 0;
        let mut pass: u64 = 0;
        'fill: loop {
            pass += 1;
            for (i, &(_, weight)) in backends.iter().enumerate() {
                // Weighted Maglev (as Envoy builds it): a backend takes a turn in a pass only while
                // its slots are behind its share of the passes so far, so slots follow weights.
                if weight == 0 || claimed[i] * u64::from(max_weight) >= pass * u64::from(weight) {
                    continue;
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m as u64) as usize;
                    next[i] += 1;
                    if slots[slot] == u32::MAX {
                        slots[slot] = i as u32;
                        claimed[i] += 1;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Some(Self { slots: slots.into_boxed_slice() })
    }

    /// The backend for `key`: the owner of its slot, or, when that one may not take the request,
    /// the owner of the next slot in the key's probe sequence (the slots of the key re-hashed
    /// with 1, 2, ...) that `may`; `None` if no owner may.
    ///
    /// Probing by re-hashing rather than the adjacent slot spreads a missing backend's keys over
    /// the others in proportion to their shares: adjacent slots are not independent of each
    /// other (with 3 backends one neighbour took 17 % more than its share).
    pub(crate) fn lookup(&self, key: u64, may: impl Fn(usize) -> bool) -> Option<usize> {
        let m = self.slots.len() as u64;
        let owner = |slot: u64| self.slots[(slot % m) as usize] as usize;
        let probes = (0..PROBES).map(|k| if k == 0 { key } else { hash_bytes(&key.to_le_bytes(), k) });
        if let Some(i) = probes.map(owner).find(|&i| may(i)) {
            return Some(i);
        }
        // Few backends may (or none): every slot once, so that any that may is found.
        (0..m).map(|k| owner(key.wrapping_add(k))).find(|&i| may(i))
    }

    #[cfg(test)]
    fn share(&self, index: usize) -> usize {
        self.slots.iter().filter(|&&s| s as usize == index).count()
    }
}

/// The smallest prime ≥ 100·n, and at least [`SMALL_TABLE`].
fn table_size(n: usize) -> usize {
    let mut m = (n * 100).max(SMALL_TABLE);
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// FNV-1a over `bytes` from `seed`, then a murmur3 finaliser so nearby inputs spread.
pub(crate) fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The key of a client IP address.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets(), 0),
        IpAddr::V6(v6) => hash_bytes(&v6.octets(), 0),
    }
}

/// The key of a client address and port (a UDP source).
pub fn hash_source(addr: SocketAddr) -> u64 {
    hash_bytes(&addr.port().to_be_bytes(), hash_ip(addr.ip()))
}

/// The key of a header value (or any bytes).
pub fn hash_value(value: &[u8]) -> u64 {
    hash_bytes(value, 0)
}

fn hash_addr(addr: &SocketAddr, seed: u64) -> u64 {
    let mut bytes = [0u8; 18];
    let n = match addr.ip() {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            bytes[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    bytes[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    hash_bytes(&bytes[..n + 2], seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backends(n: usize, base: u16) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, 1 + i as u8], base + i as u16)), 1)).collect()
    }

    const KEYS: u64 = 10_000;

    fn owners(table: &Maglev, down: &[usize]) -> Vec<usize> {
        (0..KEYS).map(|k| table.lookup(hash_value(&k.to_le_bytes()), |i| !down.contains(&i)).unwrap()).collect()
    }

    #[test]
    fn the_table_is_prime_sized_and_shared_evenly() {
        assert_eq!(table_size(3), 65_537);
        assert!(is_prime(table_size(700)) && table_size(700) >= 70_000);
        let t = Maglev::new(&backends(7, 8000)).unwrap();
        for i in 0..7 {
            let share = t.share(i) as f64 / 65_537.0;
            assert!((share - 1.0 / 7.0).abs() < 0.001, "backend {i}: {share}");
        }
    }

    #[test]
    fn weights_set_the_shares_of_the_table() {
        let mut b = backends(3, 8000);
        b[0].1 = 5;
        let t = Maglev::new(&b).unwrap();
        let share = t.share(0) as f64 / 65_537.0;
        assert!((share - 5.0 / 7.0).abs() < 0.001, "{share}");
    }

    #[test]
    fn with_no_owner_that_may_the_lookup_is_none() {
        let t = Maglev::new(&backends(3, 8000)).unwrap();
        assert_eq!(t.lookup(42, |_| false), None);
        assert!(Maglev::new(&[]).is_none());
    }

    #[test]
    fn hashes_are_fixed_across_runs_and_builds() {
        // Pinned (and checked against an independent implementation): a change here would move
        // every client of every deployed balancer to another backend.
        assert_eq!(hash_value(b"alice"), 0x3507_d047_a67c_08f4);
        assert_eq!(hash_ip("10.0.0.1".parse().unwrap()), 0x251c_e681_282f_daa9);
        assert_eq!(hash_source("10.0.0.1:8000".parse().unwrap()), 0x3f41_cc5b_06d6_404d);
        assert_ne!(hash_source("10.0.0.1:8001".parse().unwrap()), hash_source("10.0.0.1:8000".parse().unwrap()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// When one of n backends leaves, only its keys move and every other key stays; the
        /// moved keys spread evenly over the rest; when it comes back, every key is where it
        /// was. The table's shares are exact (see above), so with 10,000 keys the counts are
        /// binomial around them: bounds of 5 standard deviations (1/n ± 2.4 points at n = 3,
        /// ± 1.5 at n = 10) never fail by chance.
        #[test]
        fn one_backend_leaving_moves_only_its_own_keys(n in 3usize..=10, gone in 0usize..10, base in 1000u16..60000) {
            let gone = gone % n;
            let t = Maglev::new(&backends(n, base)).unwrap();
            // Keys of a backend holding a share p of the table: within 5 binomial deviations.
            let near = |count: usize, p: f64| {
                let (mean, sd) = (KEYS as f64 * p, (KEYS as f64 * p * (1.0 - p)).sqrt());
                (count as f64 - mean).abs() <= 5.0 * sd
            };
            let before = owners(&t, &[]);
            for i in 0..n {
                let c = before.iter().filter(|&&o| o == i).count();
                prop_assert!(near(c, 1.0 / n as f64), "backend {i} has {c} of {KEYS} keys");
            }
            let after = owners(&t, &[gone]);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            prop_assert!(before.iter().zip(&after).all(|(&a, &b)| a == b || a == gone));
            prop_assert!(after.iter().all(|&o| o != gone));
            prop_assert!(near(moved, 1.0 / n as f64), "moved {moved} of {KEYS} keys");
            for i in (0..n).filter(|&i| i != gone) {
                let c = after.iter().filter(|&&o| o == i).count();
                prop_assert!(near(c, 1.0 / (n - 1) as f64), "after: backend {i} has {c}");
            }
            prop_assert_eq!(owners(&t, &[]), before);
        }

        /// A retry walks on past what it tried and never returns a backend it may not use.
        #[test]
        fn a_retry_goes_to_the_next_backend_not_tried(n in 2usize..=8, key in any::<u64>()) {
            let t = Maglev::new(&backends(n, 9000)).unwrap();
            let mut tried = Vec::new();
            while let Some(i) = t.lookup(key, |i| !tried.contains(&i)) {
                prop_assert!(!tried.contains(&i));
                tried.push(i);
            }
            prop_assert_eq!(tried.len(), n, "every backend is tried once before giving up");
        }
    }
}
