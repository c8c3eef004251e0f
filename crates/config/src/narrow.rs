//! Every mistake of a configuration file, each at its place.
//!
//! serde stops at the first error, and inside a table whose `kind` selects
//! what it is (`[[enforcer]]`, `[[source]]`) it loses the place of what
//! was wrong: serde reads such a table whole before it knows its type, so
//! an error inside it points at the table's start. So when the whole file
//! does not deserialize, each top-level key and each element of an array
//! of tables is tried alone, and a failing table is narrowed down, key by
//! key, to the smallest part that still fails on its own: that part's
//! place is reported.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A value of the document, with its place.
type Piece<'i> = Spanned<DeValue<'i>>;

/// One error: what is wrong and the bytes it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub message: String,
    pub span: Option<Range<usize>>,
}

impl From<toml::de::Error> for Found {
    fn from(e: toml::de::Error) -> Found {
        Found {
            message: e.message().trim_end().to_string(),
            span: e.span(),
        }
    }
}

/// Every error of `text` read as a `T`, in the order of the file (empty
/// when it reads).
pub fn errors<'i, T: DeserializeOwned>(text: &'i str) -> Vec<Found> {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return vec![e.into()],
    };
    if fails::<T>(doc.clone()).is_none() {
        return Vec::new();
    }
    let whole = doc.span();
    let root = doc.into_inner();
    let mut found = Vec::new();
    for (key, value) in root.iter() {
        let alone = |v: Piece<'i>| -> Spanned<DeTable<'i>> {
            let mut t = DeTable::new();
            t.insert(key.clone(), v);
            Spanned::new(whole.clone(), t)
        };
        match value.get_ref() {
            // An array of tables: each element alone, keeping the `kind`
            // that says what it is.
            DeValue::Array(items)
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|i| matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                for item in items {
                    let one = |v: Piece<'i>| alone(Spanned::new(value.span(), array(v)));
                    narrow::<T>(&one, item.clone(), &["kind"], &mut found);
                }
            }
            _ => narrow::<T>(&alone, value.clone(), &[], &mut found),
        }
    }
    if found.is_empty() {
        // Only the whole is wrong (no part is on its own).
        found.extend(fails::<T>(Spanned::new(whole, root)).map(Found::from));
    }
    found.sort_by_key(|f| f.span.as_ref().map_or(0, |s| s.start));
    found.dedup();
    found
}

fn array(v: Piece<'_>) -> DeValue<'_> {
    DeValue::Array(std::iter::once(v).collect())
}

fn fails<T: DeserializeOwned>(doc: Spanned<DeTable<'_>>) -> Option<toml::de::Error> {
    T::deserialize(toml::de::Deserializer::from(doc)).err()
}

/// Left out of a part tried alone, a required key is missing: that is not
/// the part's fault.
fn missing(e: &toml::de::Error) -> bool {
    e.message().starts_with("missing field")
}

/// Reports where `piece` fails, inside the document `place` puts it in:
/// at the keys of a table that fail alone (keeping the keys named in
/// `keep`), else at the piece itself.
fn narrow<'i, T: DeserializeOwned>(
    place: &dyn Fn(Piece<'i>) -> Spanned<DeTable<'i>>,
    piece: Piece<'i>,
    keep: &[&str],
    found: &mut Vec<Found>,
) {
    let Some(e) = fails::<T>(place(piece.clone())) else {
        return;
    };
    if let DeValue::Table(table) = piece.get_ref() {
        // The kept keys alone (an unknown `kind`): nothing else can be
        // told apart from them.
        let kept: Vec<_> = table
            .iter()
            .filter(|(k, _)| keep.contains(&k.get_ref().as_ref()))
            .collect();
        if let Some((_, first)) = kept.first() {
            let t: DeTable<'i> = kept
                .iter()
                .map(|(k, v)| ((*k).clone(), (*v).clone()))
                .collect();
            if let Some(e) = fails::<T>(place(Spanned::new(piece.span(), DeValue::Table(t))))
                && !missing(&e)
            {
                found.push(at(&e, first.span()));
                return;
            }
        }
        let mut narrowed = false;
        for (key, value) in table.iter() {
            if keep.contains(&key.get_ref().as_ref()) {
                continue;
            }
            let with_only = |v: Piece<'i>| {
                let mut t = DeTable::new();
                for (k, kv) in table.iter() {
                    if keep.contains(&k.get_ref().as_ref()) {
                        t.insert(k.clone(), kv.clone());
                    }
                }
                t.insert(key.clone(), v);
                place(Spanned::new(piece.span(), DeValue::Table(t)))
            };
            if fails::<T>(with_only(value.clone())).is_some_and(|e| !missing(&e)) {
                narrowed = true;
                narrow::<T>(&with_only, value.clone(), &[], found);
            }
        }
        if narrowed {
            return;
        }
    }
    found.push(at(&e, piece.span()));
}

/// `e` at the place serde kept, when that is inside `here` (the most
/// precise there is), else at `here`.
fn at(e: &toml::de::Error, here: Range<usize>) -> Found {
    let span = match e.span() {
        Some(s) if s.start >= here.start && s.end <= here.end => s,
        _ => here,
    };
    Found {
        message: e.message().trim_end().to_string(),
        span: Some(span),
    }
}

/// The place of the `index`-th table of the array of tables `key`.
pub fn element_span(text: &str, key: &str, index: usize) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let (_, value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == key)?;
    match value.get_ref() {
        DeValue::Array(items) => items.get(index).map(|i| i.span()),
        _ => None,
    }
}

/// The place of the value at `path` (a key in nested tables, such as
/// `["rollup", "ipv4_prefix"]`), when the file sets it.
pub fn key_span(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let (first, rest) = path.split_first()?;
    let (_, mut value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == first)?;
    for key in rest {
        let DeValue::Table(table) = value.get_ref() else {
            return None;
        };
        value = table.iter().find(|(k, _)| k.get_ref() == key)?.1;
    }
    Some(value.span())
}
