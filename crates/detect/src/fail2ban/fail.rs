//! The values a fail2ban failure is read by ([`Fail`]), each in its
//! [`Key`]'s place, and how failures merge under a multi-line failure id
//! (fail2ban's `_mergeFailure`).
//!
//! Under an attack nearly every line is a failure whose groups (its id,
//! user and address) are copied out of the line. A filter keeps one
//! [`Fail`] for the line it reads and writes each line's values into the
//! room of the last one's; caching a failure under its id swaps it with
//! the cached one it evicts, whose room the next line then uses. So
//! reading a failure allocates nothing once the room has grown to the
//! longest values seen (bounded: see `room.rs`).

use super::ids::Ids;
use super::room;

/// The groups a failure is read by: what it reports (host, address, no
/// failure), the multi-line failure id and the flags that merge failures
/// under it, and the prefregex's content. No other group changes what a
/// filter finds, so no other group is copied out of a match.
const READ: [(&str, Key); 12] = [
    ("mlfid", Key::Mlfid),
    ("content", Key::Content),
    ("nofail", Key::Nofail),
    ("mlfgained", Key::Mlfgained),
    ("mlfforget", Key::Mlfforget),
    ("mlfpending", Key::Mlfpending),
    ("user", Key::User),
    ("fid", Key::Fid),
    ("ip4", Key::Ip4),
    ("ip6", Key::Ip6),
    ("dns", Key::Dns),
    ("cidr", Key::Cidr),
];

/// A value a failure is read by: a group of [`READ`], or the users an id
/// has failed as. Its number is its place in [`Fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Key {
    Mlfid,
    Content,
    Nofail,
    Mlfgained,
    Mlfforget,
    Mlfpending,
    User,
    Fid,
    Ip4,
    Ip6,
    Dns,
    Cidr,
    Users,
}

/// How many [`Key`]s there are.
const KEYS: usize = Key::Users as usize + 1;

impl Key {
    /// The key of group `name`, if a failure is read by it.
    pub(super) fn read(name: &str) -> Option<Key> {
        READ.iter().find(|(r, _)| *r == name).map(|&(_, k)| k)
    }

    /// The key's bit in a set of keys.
    pub(super) fn bit(self) -> u16 {
        1 << self as u16
    }

    /// Whether the key's value is a flag: all that is ever asked of its
    /// text is whether it is empty.
    fn is_flag(self) -> bool {
        matches!(
            self,
            Key::Nofail | Key::Mlfgained | Key::Mlfforget | Key::Mlfpending
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum Val {
    #[default]
    None,
    Str(String),
    /// The users an id has failed as: the first, and whether another.
    Users {
        first: String,
        several: bool,
    },
    Int(i64),
}

/// What [`Fail::get`] gives for a key set to [`Val::None`].
static NONE: Val = Val::None;

impl Val {
    pub(super) fn truthy(&self) -> bool {
        match self {
            Val::None => false,
            Val::Str(s) => !s.is_empty(),
            Val::Users { .. } => true,
            Val::Int(i) => *i != 0,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Makes this `Val::Str(text)`, in the room of the string it holds.
    fn set_str(&mut self, text: &str) {
        match self {
            Val::Str(s) => room::write(s, text),
            _ => *self = Val::Str(text.to_string()),
        }
    }

    /// Makes this the users of an id that has failed as `first` alone so
    /// far, in the room of the string it holds.
    fn set_first_user(&mut self, first: &str) {
        match self {
            Val::Users { first: f, several } => {
                room::write(f, first);
                *several = false;
            }
            _ => {
                *self = Val::Users {
                    first: first.to_string(),
                    several: false,
                }
            }
        }
    }

    /// Makes this a copy of `other`, in the room of the string it holds.
    fn set_to(&mut self, other: &Val) {
        match (&mut *self, other) {
            (Val::Str(s), Val::Str(t)) => room::write(s, t),
            (
                Val::Users { first, several },
                Val::Users {
                    first: f,
                    several: s,
                },
            ) => {
                room::write(first, f);
                *several = *s;
            }
            _ => *self = other.clone(),
        }
    }
}

/// A failure's values, each in its [`Key`]'s place. A key is set when its
/// group is in the regex, even if the group took no part in the match
/// ([`Val::None`]): merged into another failure, it clears that one's.
///
/// A key that is not set, or set to [`Val::None`], keeps the value it held
/// last, unread: its string is the room of the next value.
#[derive(Debug, Default)]
pub(super) struct Fail {
    /// The keys set, a bit each.
    set: u16,
    /// The keys set to [`Val::None`], a bit each (also in `set`).
    none: u16,
    vals: [Val; KEYS],
}

impl Fail {
    pub(super) fn has(&self, key: Key) -> bool {
        self.set & key.bit() != 0
    }

    pub(super) fn get(&self, key: Key) -> Option<&Val> {
        if !self.has(key) {
            None
        } else if self.none & key.bit() != 0 {
            Some(&NONE)
        } else {
            Some(&self.vals[key as usize])
        }
    }

    pub(super) fn get_mut(&mut self, key: Key) -> Option<&mut Val> {
        if self.none & key.bit() != 0 {
            self.none &= !key.bit();
            self.vals[key as usize] = Val::None;
        }
        self.has(key).then(|| &mut self.vals[key as usize])
    }

    /// Marks `key` as set to the value in its place.
    fn mark(&mut self, key: Key) {
        self.set |= key.bit();
        self.none &= !key.bit();
    }

    pub(super) fn insert(&mut self, key: Key, v: Val) {
        if v == Val::None {
            self.set_none(key);
        } else {
            self.vals[key as usize] = v;
            self.mark(key);
        }
    }

    /// Sets `key` to a group's `text`: of a flag, whether it is empty (see
    /// [`Key::is_flag`]); else the text, in the room of the last value.
    pub(super) fn set_text(&mut self, key: Key, text: &str) {
        self.mark(key);
        let v = &mut self.vals[key as usize];
        if key.is_flag() {
            *v = Val::Int(i64::from(!text.is_empty()));
        } else {
            v.set_str(text);
        }
    }

    /// Sets `key` to [`Val::None`], keeping the room of its last value.
    pub(super) fn set_none(&mut self, key: Key) {
        self.set |= key.bit();
        self.none |= key.bit();
    }

    /// Whether `key` was set; unsets it, keeping the room of its value.
    pub(super) fn unset(&mut self, key: Key) -> bool {
        let had = self.has(key);
        self.set &= !key.bit();
        self.none &= !key.bit();
        had
    }

    /// Unsets `key`; whether its value was truthy.
    pub(super) fn unset_truthy(&mut self, key: Key) -> bool {
        let truthy = self.get(key).is_some_and(Val::truthy);
        self.unset(key);
        truthy
    }

    /// Unsets every key, keeping the room of their values.
    pub(super) fn clear(&mut self) {
        self.set = 0;
        self.none = 0;
    }

    /// Makes this failure a copy of `other` but for its `except` key (left
    /// unset), in the room of its values.
    pub(super) fn set_to(&mut self, other: &Fail, except: Key) {
        self.set = other.set & !except.bit();
        self.none = other.none & !except.bit();
        let mut set = self.set & !self.none;
        while set != 0 {
            let k = set.trailing_zeros() as usize;
            set &= set - 1;
            self.vals[k].set_to(&other.vals[k]);
        }
    }

    /// Sets every key `other` sets to its value there, where that is not
    /// [`Val::None`]. The values are swapped: `other` is left with the room
    /// of the ones they replace, and no key set.
    pub(super) fn update(&mut self, other: &mut Fail) {
        let mut set = other.set & !other.none;
        while set != 0 {
            let k = set.trailing_zeros() as usize;
            set &= set - 1;
            self.set |= 1 << k;
            self.none &= !(1 << k);
            std::mem::swap(&mut self.vals[k], &mut other.vals[k]);
        }
        other.clear();
    }

    /// The bytes its values' strings hold, read or not.
    #[cfg(test)]
    pub(super) fn room_bytes(&self) -> usize {
        self.vals
            .iter()
            .map(|v| match v {
                Val::Str(s) | Val::Users { first: s, .. } => s.capacity(),
                _ => 0,
            })
            .sum()
    }

    /// The user this failure failed as, if it names one.
    fn user(&self) -> Option<&str> {
        self.get(Key::User)
            .and_then(Val::as_str)
            .filter(|u| !u.is_empty())
    }

    /// Sets [`Key::Users`] to this failure's user alone, if it names one.
    fn set_first_user(&mut self) {
        let mut users = std::mem::take(&mut self.vals[Key::Users as usize]);
        let user = self.user();
        if let Some(user) = user {
            users.set_first_user(user);
        }
        let named = user.is_some();
        self.vals[Key::Users as usize] = users;
        if named {
            self.mark(Key::Users);
        }
    }

    /// Notes that this failure, cached under its id, failed again as
    /// `user`: whether it has now failed as several users. fail2ban keeps
    /// the set of them, of which it only asks whether it holds more than
    /// one.
    fn update_users(&mut self, user: Option<&str>) -> bool {
        if let Some(Val::Users { first, several }) = self.get_mut(Key::Users) {
            *several |= user.is_some_and(|u| u != first);
            return *several;
        }
        if let Some(first) = user {
            self.vals[Key::Users as usize].set_first_user(first);
            self.mark(Key::Users);
        }
        false
    }
}

/// Where a failure merged under its multi-line id is: in the filter's
/// cache of ids, or the line's own (an id forgotten, or none cached).
pub(super) enum Merged {
    Cached(usize),
    Line,
}

impl Merged {
    /// The merged failure, in `ids` or the line's `line`.
    pub(super) fn fail<'a>(&self, ids: &'a mut Ids<Fail>, line: &'a mut Fail) -> &'a mut Fail {
        match self {
            Merged::Cached(slot) => ids.get_mut(*slot),
            Merged::Line => line,
        }
    }
}

/// fail2ban's `_mergeFailure`: merges the line's failure `fail` under its
/// multi-line id `mlfid` in `ids`. `fail` is left with the merged failure
/// when that is not cached ([`Merged::Line`]), else with room only.
pub(super) fn merge(ids: &mut Ids<Fail>, mlfid: &str, fail: &mut Fail) -> Merged {
    let cached = ids.find(mlfid);
    // Whether the id has failed as several users.
    let mut several = false;
    let mut fl = 0u8;
    if fail.get(Key::Mlfgained).is_some_and(Val::truthy) {
        fl |= 8 | 1;
        if !fail.get(Key::Nofail).is_some_and(Val::truthy) {
            let g = fail.get(Key::Mlfgained).cloned().unwrap_or(Val::None);
            fail.insert(Key::Nofail, g);
        }
    } else if fail.get(Key::Nofail).is_some_and(Val::truthy) {
        fl |= 1;
    }
    if fail.unset_truthy(Key::Mlfforget) {
        fl |= 2;
    }
    let merged = match cached {
        Ok(slot) => {
            let g = ids.get_mut(slot);
            several = g.update_users(fail.user());
            if g.unset_truthy(Key::Nofail) {
                fl |= 4;
            }
            if g.unset_truthy(Key::Mlfgained) {
                fl |= 4;
            }
            if fl & 8 != 0 {
                g.unset(Key::Mlfpending);
            }
            g.update(fail);
            if fl & 2 != 0 {
                // Forgotten: the merged failure is the line's own now, and
                // the slot keeps the room.
                std::mem::swap(fail, ids.get_mut(slot));
                ids.forget(slot);
                Merged::Line
            } else {
                Merged::Cached(slot)
            }
        }
        Err(absent) if fl & 2 == 0 => {
            fail.set_first_user();
            let slot = ids.insert(mlfid, absent, fail);
            fail.clear();
            Merged::Cached(slot)
        }
        Err(_) => Merged::Line,
    };
    let g = merged.fail(ids, fail);
    let pending = g.unset_truthy(Key::Mlfpending);
    if pending || several {
        g.unset(Key::Nofail);
        g.unset(Key::Mlfgained);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_written_in_the_room_of_the_last() {
        let mut f = Fail::default();
        f.set_text(Key::User, "a-rather-long-user-name");
        let room = f.get(Key::User).and_then(Val::as_str).unwrap().as_ptr();
        f.clear();
        assert_eq!(f.get(Key::User), None);
        f.set_none(Key::User);
        assert_eq!(f.get(Key::User), Some(&Val::None));
        f.set_text(Key::User, "root");
        let user = f.get(Key::User).and_then(Val::as_str).unwrap();
        assert_eq!((user, user.as_ptr()), ("root", room));
        f.set_text(Key::Nofail, "");
        assert_eq!(f.get(Key::Nofail), Some(&Val::Int(0)));
    }

    #[test]
    fn an_update_skips_what_took_no_part_and_swaps_the_rest() {
        let (mut cached, mut line) = (Fail::default(), Fail::default());
        cached.set_text(Key::User, "alice");
        cached.set_text(Key::Ip4, "198.18.0.1");
        line.set_none(Key::User);
        line.set_text(Key::Ip4, "198.18.0.2");
        cached.update(&mut line);
        assert_eq!(cached.get(Key::User), Some(&Val::Str("alice".into())));
        assert_eq!(cached.get(Key::Ip4), Some(&Val::Str("198.18.0.2".into())));
        assert!(!line.has(Key::User) && !line.has(Key::Ip4));
        let mut copy = Fail::default();
        copy.set_to(&cached, Key::User);
        assert_eq!(copy.get(Key::Ip4), cached.get(Key::Ip4));
        assert_eq!((copy.get(Key::User), copy.get(Key::Dns)), (None, None));
    }
}
