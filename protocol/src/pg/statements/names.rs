//! What a session has prepared: statements and portals by name, and the
//! parameter type lists (a Parse's, a ParameterDescription's) that let
//! binary values be read.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::error::ProtocolError;
use super::super::message::{read_cstr, read_i32};
use super::transaction::Hold;
use super::{MAX_NAMES, MAX_TYPES, Param, Statement, Text};

/// A prepared statement: its name, text and parameter types.
pub(super) struct Prepared {
    /// Shared with the portals bound to it and their statements: no copy
    /// of the name per Bind and Execute.
    pub name: Arc<str>,
    pub text: Arc<Text>,
    /// Parameter type OIDs (0: unspecified), from the Parse or the server.
    pub types: Arc<[u32]>,
}

impl Prepared {
    /// Bytes this statement counts against `MAX_KEPT`.
    pub fn kept(&self) -> usize {
        self.text.text.len() + 4 * self.types.len()
    }
}

/// A bound portal: its statement, text and values.
pub(super) struct Portal {
    pub statement: Arc<str>,
    pub text: Arc<Text>,
    pub params: Arc<[Param]>,
    /// See `Statement::param_count`.
    pub param_count: usize,
    /// Bytes this portal counts against `MAX_KEPT`: its values and their slots.
    pub kept: usize,
    /// Which Bind of the session made it (see `Statement::binding`).
    pub binding: u64,
    /// Whether it outlives its transaction (a SQL cursor `WITH HOLD`).
    pub hold: Hold,
    /// Made by a SQL `DECLARE`, known once it ran (a Bind's is known when sent).
    pub cursor: bool,
}

impl Portal {
    /// `s`, an Execute of this portal, runs what it holds.
    pub fn runs_in(&self, s: &mut Statement) {
        s.text = Arc::clone(&self.text);
        s.statement = Arc::clone(&self.statement);
        s.params = Arc::clone(&self.params);
        s.param_count = self.param_count;
        s.binding = self.binding;
    }
}

/// Prepared statements or portals by name. Drivers mostly use the unnamed
/// one (`""`), which lives outside the map: no hashing per statement. The
/// names are the client's: foldhash's quality hasher, seeded per map,
/// keeps them from being chosen to collide, at a fraction of SipHash's cost.
pub(super) struct Names<T> {
    unnamed: Option<T>,
    named: HashMap<String, T, foldhash::quality::RandomState>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            unnamed: None,
            named: HashMap::default(),
        }
    }
}

impl<T> Names<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<T> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }

    pub fn insert(&mut self, name: String, value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name, value);
        }
    }

    /// Whether any named entry is kept.
    pub fn has_named(&self) -> bool {
        !self.named.is_empty()
    }

    /// Takes every named entry out.
    pub fn drain_named(&mut self) -> impl Iterator<Item = T> + '_ {
        self.named.drain().map(|(_, v)| v)
    }

    /// Drops the named entries `keep` says no to (it may change those it
    /// keeps); answers what `kept` says they held, summed.
    pub fn release_named(&mut self, mut keep: impl FnMut(&mut T) -> bool, kept: impl Fn(&T) -> usize) -> usize {
        let mut freed = 0;
        self.named.retain(|_, v| {
            keep(v) || {
                freed += kept(v);
                false
            }
        });
        freed
    }

    /// Takes every entry out, the unnamed one too.
    pub fn drain_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.unnamed.take().into_iter().chain(self.drain_named())
    }

    /// Whether another named entry fits (the unnamed one always does).
    pub fn has_room_for(&self, name: &str) -> bool {
        name.is_empty() || self.named.len() < MAX_NAMES || self.named.contains_key(name)
    }
}

/// `name` to share: the unnamed statement's empty name allocates nothing.
pub(super) fn shared_name(name: &str) -> Arc<str> {
    static UNNAMED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    if name.is_empty() {
        Arc::clone(&UNNAMED)
    } else {
        Arc::from(name)
    }
}

/// No parameter types, shared: most Parses declare none.
pub(super) fn no_types() -> Arc<[u32]> {
    static NONE: std::sync::LazyLock<Arc<[u32]>> = std::sync::LazyLock::new(|| Arc::from([]));
    Arc::clone(&NONE)
}

/// The parameter types of a Parse, from just after its statement text:
/// none when there are more than `MAX_TYPES` or the list is malformed.
pub(super) fn declared_types(after_name: &[u8]) -> Arc<[u32]> {
    let mut b = after_name;
    if read_cstr(&mut b, "Parse").is_err() {
        return no_types();
    }
    declared_types_after_text(b)
}

/// A count and that many type OIDs (a Parse's tail, a ParameterDescription).
pub(super) fn declared_types_after_text(mut b: &[u8]) -> Arc<[u32]> {
    let Ok(n) = read_i16(&mut b) else {
        return no_types();
    };
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 || n > MAX_TYPES {
        return no_types();
    }
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        match read_i32(&mut b, "ParameterDescription") {
            Ok(oid) => types.push(oid as u32),
            Err(_) => return no_types(),
        }
    }
    types.into()
}

pub(super) fn read_i16(b: &mut &[u8]) -> Result<i16, ProtocolError> {
    let (head, rest) = b
        .split_first_chunk::<2>()
        .ok_or(ProtocolError::Malformed { what: "Bind" })?;
    *b = rest;
    Ok(i16::from_be_bytes(*head))
}
