//! Literal bytes compared with a text a word at a time.
//!
//! The literals a walk compares (`" for "`, `"invalid user "`, `" port "`)
//! are a few bytes long, and each line compares several: a call to
//! `memcmp` for each costs more than the comparison. A literal of at most
//! eight bytes is compared in one step as a masked word wherever the text
//! has eight bytes left, longer ones and the last bytes of a text by
//! `starts_with`.

/// A literal, its first eight bytes also as a word.
#[derive(Debug)]
pub(crate) struct Literal {
    bytes: Box<[u8]>,
    word: u64,
    mask: u64,
}

impl Literal {
    pub(crate) fn new(bytes: &[u8]) -> Literal {
        let n = bytes.len().min(8);
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&bytes[..n]);
        Literal {
            bytes: bytes.into(),
            word: u64::from_le_bytes(w),
            mask: if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            },
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the literal ends if `hay` holds it at `at` (at most its
    /// length).
    #[inline]
    pub(crate) fn end(&self, hay: &[u8], at: usize) -> Option<usize> {
        let b = &self.bytes;
        let same = match hay.get(at..at.saturating_add(8)) {
            Some(eight) if b.len() <= 8 => {
                let w = u64::from_le_bytes(eight.try_into().unwrap_or([0; 8]));
                w & self.mask == self.word
            }
            _ => hay.get(at..).is_some_and(|rest| rest.starts_with(b)),
        };
        same.then(|| at + b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every literal of up to ten bytes is found where `starts_with` finds
    /// it, at every place of texts shorter and longer than a word.
    #[test]
    fn compared_as_starts_with_compares() {
        let texts = [
            "",
            "a",
            "ab port 22",
            " port ",
            "xx port 2",
            "aaaaaaaaaaaa",
            "invalid user x",
        ];
        let lits = [
            "",
            "a",
            " port ",
            "aaaaaaaa",
            "aaaaaaaaa",
            "invalid user ",
            "x",
            "22",
        ];
        for l in lits {
            let lit = Literal::new(l.as_bytes());
            assert_eq!(lit.bytes(), l.as_bytes());
            for t in texts {
                let hay = t.as_bytes();
                for at in 0..=hay.len() + 1 {
                    let want = hay
                        .get(at..)
                        .is_some_and(|r| r.starts_with(l.as_bytes()))
                        .then(|| at + l.len());
                    assert_eq!(lit.end(hay, at), want, "{l:?} {t:?} {at}");
                }
            }
        }
    }
}
