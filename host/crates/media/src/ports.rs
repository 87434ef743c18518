//! RTP/RTCP port pairs (RFC 3550 §11: RTP on an even port, RTCP on the next
//! odd one) from a configured range, so that the range can never leak: every
//! pair handed out is either in use or back in the pool.

use std::collections::{HashSet, VecDeque};

/// Says whether a pair can be used now (the host binds its sockets: another
/// program may hold a port of the range, as an ephemeral port).
pub type Probe = Box<dyn FnMut(u16) -> bool + Send>;

/// How many free pairs one allocation tries before giving up.
const PROBES: usize = 64;

/// A pool of even ports in `first..=last`; each pair is `(p, p + 1)`.
pub struct PortPool {
    free: VecDeque<u16>,
    used: HashSet<u16>,
    probe: Option<Probe>,
}

impl std::fmt::Debug for PortPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortPool")
            .field("free", &self.free.len())
            .field("used", &self.used.len())
            .finish_non_exhaustive()
    }
}

/// Why a range cannot be a port pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the range {0}-{1} is empty or reversed")]
    Empty(u16, u16),
    #[error("the range {0}-{1} holds no even/odd port pair")]
    NoPair(u16, u16),
    #[error("ports below 1024 are privileged: start the range at 1024 or above")]
    Privileged,
}

impl PortPool {
    /// Every even port `p` with `p` and `p + 1` inside `first..=last`.
    pub fn new(first: u16, last: u16) -> Result<PortPool, RangeError> {
        if first > last {
            return Err(RangeError::Empty(first, last));
        }
        if first < 1024 {
            return Err(RangeError::Privileged);
        }
        let start = first + first % 2;
        let free: VecDeque<u16> = (start..last).step_by(2).collect();
        if free.is_empty() {
            return Err(RangeError::NoPair(first, last));
        }
        Ok(PortPool {
            free,
            used: HashSet::new(),
            probe: None,
        })
    }

    /// The next free pair's RTP port (the least recently released first, so a
    /// port is not reused while stray packets for its last call may arrive).
    /// A pair the probe refuses goes to the back of the queue; after
    /// [`PROBES`] refusals in a row the allocation fails.
    pub fn allocate(&mut self) -> Option<u16> {
        for _ in 0..PROBES.min(self.free.len()) {
            let p = self.free.pop_front()?;
            if self.probe.as_mut().is_none_or(|probe| probe(p)) {
                self.used.insert(p);
                return Some(p);
            }
            self.free.push_back(p);
        }
        None
    }

    /// Checks each pair before handing it out (see [`Probe`]).
    pub fn set_probe(&mut self, probe: Probe) {
        self.probe = Some(probe);
    }

    /// Gives a pair back; a port that is not in use is ignored (releasing
    /// twice is harmless).
    pub fn release(&mut self, rtp_port: u16) {
        if self.used.remove(&rtp_port) {
            self.free.push_back(rtp_port);
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pairs_are_even_inside_the_range_and_come_back() {
        let mut pool = PortPool::new(30001, 30008).unwrap();
        // 30002/3, 30004/5, 30006/7: 30008 has no partner inside.
        assert_eq!(pool.available(), 3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert_eq!((a, b, c), (30002, 30004, 30006));
        assert_eq!(pool.allocate(), None, "exhausted");
        pool.release(b);
        pool.release(b);
        pool.release(40000);
        assert_eq!((pool.in_use(), pool.available()), (2, 1));
        assert_eq!(pool.allocate(), Some(b));
        pool.release(a);
        pool.release(c);
        pool.release(b);
        // Least recently released first.
        assert_eq!(pool.allocate(), Some(a));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert_eq!(
            PortPool::new(5000, 4000).unwrap_err(),
            RangeError::Empty(5000, 4000)
        );
        assert_eq!(
            PortPool::new(40001, 40001).unwrap_err(),
            RangeError::NoPair(40001, 40001)
        );
        assert_eq!(PortPool::new(80, 9000).unwrap_err(), RangeError::Privileged);
    }

    #[test]
    fn pairs_the_probe_refuses_are_skipped_not_lost() {
        let mut pool = PortPool::new(30000, 30007).unwrap();
        // 30002 is held by another program.
        pool.set_probe(Box::new(|p| p != 30002));
        assert_eq!(pool.allocate(), Some(30000));
        assert_eq!(pool.allocate(), Some(30004));
        assert_eq!(pool.allocate(), Some(30006));
        assert_eq!(pool.allocate(), None, "only the refused pair is left");
        assert_eq!((pool.in_use(), pool.available()), (3, 1));
    }
}
