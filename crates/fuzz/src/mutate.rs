//! Making inputs: random mutations stacked on seeds and on earlier inputs
//! the target accepted.

/// Longest input made.
pub const MAX_INPUT: usize = 4096;
/// Inputs kept to mutate further.
const POOL: usize = 512;

/// Bytes that often change a parser's mind.
const INTERESTING: &[u8] =
    b"\0\xff\x7f\x80\n\r\t /:.%[]{}()\\$#;,=\"'-+*?|^0123456789aAfFzZ\xc3\xa9\xe2\x80\xae";

/// A small, fast, seeded generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`: the same seed gives the same numbers.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Makes inputs for one target.
pub struct Mutator {
    rng: Rng,
    seeds: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    dictionary: &'static [&'static str],
    current: Vec<u8>,
}

impl Mutator {
    /// A mutator whose inputs start from `seeds` and splice in `dictionary`
    /// words, reproducible from `seed`.
    pub fn new(seed: u64, seeds: &[&str], dictionary: &'static [&'static str]) -> Mutator {
        let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
        Mutator {
            rng: Rng::new(seed),
            pool: seeds.clone(),
            seeds,
            dictionary,
            current: Vec::new(),
        }
    }

    /// The next input: a seed or a kept input, mutated one to eight times
    /// (now and then a seed as it is).
    pub fn next_input(&mut self) -> &[u8] {
        let from = if self.rng.below(4) == 0 || self.pool.is_empty() {
            &self.seeds[self.rng.below(self.seeds.len())]
        } else {
            &self.pool[self.rng.below(self.pool.len())]
        };
        self.current.clear();
        self.current.extend_from_slice(from);
        if self.rng.below(64) != 0 {
            for _ in 0..1 + self.rng.below(8) {
                self.mutate();
            }
        }
        self.current.truncate(MAX_INPUT);
        &self.current
    }

    /// Keeps the last input to mutate further (the target accepted it).
    pub fn keep(&mut self) {
        if self.pool.len() < POOL {
            self.pool.push(self.current.clone());
        } else if self.rng.below(8) == 0 {
            let i = self.rng.below(POOL);
            self.pool[i] = self.current.clone();
        }
    }

    fn mutate(&mut self) {
        let len = self.current.len();
        match self.rng.below(9) {
            0 if len > 0 => {
                let i = self.rng.below(len);
                self.current[i] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let i = self.rng.below(len);
                self.current[i] = INTERESTING[self.rng.below(INTERESTING.len())];
            }
            2 => {
                let at = self.rng.below(len + 1);
                let n = 1 + self.rng.below(8);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| INTERESTING[self.rng.below(INTERESTING.len())])
                    .collect();
                self.current.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(16));
                self.current.drain(at..at + n);
            }
            4 if len > 0 => {
                // Duplicate a range, sometimes many times (long fields).
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(32));
                let piece = self.current[at..at + n].to_vec();
                let times = if self.rng.below(8) == 0 {
                    1 + self.rng.below(256)
                } else {
                    1
                };
                let to = self.rng.below(self.current.len() + 1);
                let repeated = piece.repeat(times);
                self.current.splice(to..to, repeated);
            }
            5 if !self.dictionary.is_empty() => {
                let word = self.dictionary[self.rng.below(self.dictionary.len())].as_bytes();
                let at = self.rng.below(len + 1);
                self.current.splice(at..at, word.iter().copied());
            }
            6 => {
                // Splice: our start, another seed's end.
                let other = &self.seeds[self.rng.below(self.seeds.len())];
                let cut = self.rng.below(len + 1);
                let from = self.rng.below(other.len() + 1);
                self.current.truncate(cut);
                self.current.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                // A digit run replaced by an extreme number.
                let at = self.rng.below(len);
                let n = [
                    "0",
                    "4294967296",
                    "18446744073709551616",
                    "-1",
                    "99999999999999999999",
                    "255",
                    "65535",
                    "128",
                ][self.rng.below(8)];
                self.current.splice(at..at, n.bytes());
            }
            _ => {
                if len > 0 {
                    let at = self.rng.below(len);
                    self.current.truncate(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let mut a = Mutator::new(7, &["198.51.100.7"], &["::"]);
        let mut b = Mutator::new(7, &["198.51.100.7"], &["::"]);
        for _ in 0..1000 {
            assert_eq!(a.next_input().to_vec(), b.next_input().to_vec());
        }
    }
}
