//! Strings whose room serves line after line: a filter writes each line's
//! values (a failure's groups, its multi-line id) into the room of the
//! last line's, so that reading a failure allocates nothing.
//!
//! The room is bounded: a crafted line's long group would otherwise leave
//! its room behind in every value it passed through (a failure cached
//! under each of the 100 ids a filter remembers, a dozen values each). A
//! room larger than [`KEPT`] is let go when a value that fits in
//! [`KEPT`] is written.

/// The most bytes a room keeps once a value no longer needs them.
pub(super) const KEPT: usize = 256;

/// Makes `room` hold `text`, in its own room unless that is larger than
/// [`KEPT`] and `text` would fit in less.
#[inline]
pub(super) fn write(room: &mut String, text: &str) {
    if room.capacity() > KEPT && text.len() <= KEPT {
        *room = text.to_string();
    } else {
        room.clear();
        room.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long value's room is let go when a short one follows it; a short
    /// one's is kept.
    #[test]
    fn a_long_values_room_is_not_kept() {
        let mut room = String::new();
        write(&mut room, "root");
        let kept = room.as_ptr();
        write(&mut room, "admin");
        assert_eq!((room.as_str(), room.as_ptr()), ("admin", kept));
        write(&mut room, &"x".repeat(64 << 10));
        assert!(room.capacity() >= 64 << 10);
        write(&mut room, "root");
        assert_eq!(room, "root");
        assert!(room.capacity() <= KEPT);
    }
}
