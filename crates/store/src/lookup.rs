//! The lookups a [`Writer`](crate::Writer) and a [`Reader`](crate::Reader)
//! both answer, once, over either kind of table (one written in the
//! transaction, or read from a snapshot).

use palisade_model::{Action, Decision, Net};
use redb::ReadableTable;

use crate::error::Result;
use crate::keys::{Key, action_byte, decode};
use crate::tables::Queue;

/// The part of the decisions table holding the decisions of `action`.
pub(crate) fn range_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
) -> Result<redb::Range<'_, &'static [u8], &'static [u8]>> {
    let lo = [action_byte(action)];
    let hi = [action_byte(action) + 1];
    Ok(table.range(lo.as_slice()..hi.as_slice())?)
}

/// The decisions of a range of the decisions table.
pub(crate) fn values<'a>(
    range: redb::Range<'a, &'static [u8], &'static [u8]>,
) -> impl Iterator<Item = Result<Decision>> + 'a {
    range.map(|item| decode(item?.1.value()))
}

/// A named number, 0 if never set.
pub(crate) fn meta_in<T: ReadableTable<&'static str, u64>>(table: &T, name: &str) -> Result<u64> {
    Ok(table.get(name)?.map_or(0, |v| v.value()))
}

/// The number the next record of `queue` gets (1 for a new queue).
pub(crate) fn next_number<T: ReadableTable<&'static str, u64>>(
    table: &T,
    queue: Queue,
) -> Result<u64> {
    Ok(table.get(queue.next_key())?.map_or(1, |v| v.value()))
}

/// The record under `key` of a map table.
pub(crate) fn record<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

pub(crate) fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Option<Decision>> {
    table
        .get(Key::new(action, net).as_bytes())?
        .map(|v| decode(v.value()))
        .transpose()
}

pub(crate) fn covering_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Vec<Decision>> {
    let mut out = Vec::new();
    for sup in net.supernets() {
        if let Some(d) = get_in(table, action, &sup)? {
            out.push(d);
        }
    }
    Ok(out)
}

pub(crate) fn within_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Vec<Decision>> {
    let (first, last) = net.range();
    let lo = Key::from_parts(action, net.family(), first, 0);
    let hi = Key::from_parts(action, net.family(), last, u8::MAX);
    let mut out = Vec::new();
    for item in table.range(lo.as_bytes()..=hi.as_bytes())? {
        let (_, v) = item?;
        let d = decode(v.value())?;
        if d.target != *net && net.contains(&d.target) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Every record of a map table, in key order (for writers and readers).
pub(crate) fn records(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}
