//! A Bind's portal and parameter values, read as text where their types
//! are known.

use std::sync::Arc;

use super::super::error::ProtocolError;
use super::super::message::{read_cstr, read_i32};
use super::names::{Portal, read_i16, shared_name};
use super::record::{no_params, push_lossy};
use super::transaction::Hold;
use super::{MAX_KEPT, MAX_PARAM, MAX_PARAMS_KEPT, Param, StatementTracker, Text, binary};

/// Parameters of a Bind whose room the next Bind of its portal reuses, at
/// most, and the longest value whose string it reuses: what a portal holds
/// beyond its kept bytes stays small.
const REUSED_PARAMS: usize = 64;
/// See `REUSED_PARAMS`.
const REUSED_TEXT: usize = 128;

/// One parameter value as a Bind carries it.
enum Value<'a> {
    Null,
    Bytes(&'a [u8]),
    /// Past the end of a cut body: only its length is known.
    Omitted(usize),
    /// Past the end of a cut body: not even its length is known.
    Unseen,
}

/// Calls `f` with each of the `n` values in `b`; when `cut`, the body ends
/// early and the values past its end are omitted or unseen. Fails only on
/// a malformed body that was not cut.
fn each_value(mut b: &[u8], n: usize, cut: bool, mut f: impl FnMut(usize, Value<'_>)) -> Result<(), ProtocolError> {
    for i in 0..n {
        let len = match read_i32(&mut b, "Bind") {
            Ok(len) => len,
            Err(_) if cut => {
                (i..n).for_each(|i| f(i, Value::Unseen));
                break;
            }
            Err(e) => return Err(e),
        };
        let Ok(len) = usize::try_from(len) else {
            f(i, Value::Null);
            continue;
        };
        let Some(value) = b.get(..len) else {
            if !cut {
                return Err(ProtocolError::Malformed { what: "Bind" });
            }
            f(i, Value::Omitted(len));
            (i + 1..n).for_each(|i| f(i, Value::Unseen));
            break;
        };
        b = &b[len..];
        f(i, Value::Bytes(value));
    }
    Ok(())
}

/// A FunctionCall's arguments (after its function's oid), as a Bind's
/// values of unknown types read: text as text, binary by length; with how
/// many there are. `None` when the body does not read as arguments.
pub(super) fn function_args(mut b: &[u8], cut: bool) -> Option<(Arc<[Param]>, usize)> {
    let nformats = usize::try_from(read_i16(&mut b).ok()?).unwrap_or(0);
    let formats = b.get(..2 * nformats)?;
    b = &b[2 * nformats..];
    let n = usize::try_from(read_i16(&mut b).ok()?).unwrap_or(0);
    let binary = |i: usize| {
        let at = if formats.len() == 2 { 0 } else { 2 * i };
        formats.get(at..at + 2).is_some_and(|f| f == [0, 1])
    };
    let mut kept = 0;
    let mut args = Vec::with_capacity(n.min(64));
    each_value(b, n, cut, |i, value| {
        args.push(match value {
            Value::Null => Param::Null,
            Value::Omitted(len) => Param::Omitted(len),
            Value::Unseen => Param::Unseen,
            Value::Bytes(v) if binary(i) => Param::Binary(v.len()),
            Value::Bytes(v) if kept + v.len().min(MAX_PARAM) > MAX_PARAMS_KEPT => Param::Omitted(v.len()),
            Value::Bytes(v) => {
                let keep = v.len().min(MAX_PARAM);
                kept += keep;
                let mut text = String::new();
                push_lossy(&mut text, &v[..keep]);
                Param::Text(text)
            }
        });
    })
    .ok()?;
    Some((args.into(), n))
}

impl StatementTracker {
    /// A Bind's portal and parameters; when `cut`, the body ends early and
    /// values past its end are recorded as unseen. Of a named portal,
    /// answers its name and the portal it replaced, for the Bind to be
    /// undone if the server refuses it.
    pub(super) fn bind(&mut self, b: &[u8], cut: bool) -> Option<(String, Option<Portal>)> {
        let (portal, old) = self.bind_portal(b, cut)?;
        (!portal.is_empty()).then(|| (portal.to_owned(), old))
    }

    /// `bind`: answers the portal's name and, when it is named, what it replaced.
    fn bind_portal<'b>(&mut self, mut b: &'b [u8], cut: bool) -> Option<(&'b str, Option<Portal>)> {
        let parsed = (|| {
            let portal = read_cstr(&mut b, "Bind")?;
            let stmt = read_cstr(&mut b, "Bind")?;
            // The format codes stay where they are in the message, read by index.
            let nformats = usize::try_from(read_i16(&mut b)?).unwrap_or(0);
            let formats = b.get(..2 * nformats).ok_or(ProtocolError::Malformed { what: "Bind" })?;
            b = &b[2 * nformats..];
            let n = usize::try_from(read_i16(&mut b)?).unwrap_or(0);
            // Checked whole before anything is kept: a malformed Bind changes nothing.
            each_value(b, n, cut, |_, _| {})?;
            Ok::<_, ProtocolError>((portal, stmt, formats, n, b))
        })();
        let Ok((portal, stmt, formats, n, encoded)) = parsed else {
            return None;
        };
        // One lookup for the statement's name, text and types.
        let (stmt, text, types) = match self.prepared.get(stmt) {
            Some(p) => (Arc::clone(&p.name), Arc::clone(&p.text), Some(Arc::clone(&p.types))),
            None => (shared_name(stmt), Arc::new(Text::new(b"")), None),
        };
        let format = |i: usize| {
            let at = if formats.len() == 2 { 0 } else { 2 * i };
            formats
                .get(at..at + 2)
                .is_some_and(|f| i16::from_be_bytes([f[0], f[1]]) == 1)
        };
        // The portal's last binding goes, and its bytes leave the budget.
        // The unnamed portal's values may be reused; a named portal is kept
        // whole, for the Bind to be undone.
        let mut old = self.portals.remove(portal);
        if let Some(o) = &old {
            self.kept = self.kept.saturating_sub(o.kept);
        }
        let reusable = if portal.is_empty() {
            old.take().map(|o| o.params)
        } else {
            None
        };
        // The values' slots count too: a client binding many portals of
        // thousands of values each must not hold the audit thread's memory.
        let slots = n * std::mem::size_of::<Param>();
        if self.kept + slots > MAX_KEPT {
            // Past the session's budget: the count only.
            self.keep_portal(portal, stmt, text, no_params(), n, 0);
            return Some((portal, old));
        }
        // Its values, when nothing else holds them and they are as many (and
        // few): overwritten in place, their short strings reused, so a
        // driver that binds the unnamed portal before each run allocates
        // nothing.
        let mut params = reusable
            .filter(|p| p.len() == n && n <= REUSED_PARAMS)
            .and_then(|mut p| Arc::get_mut(&mut p).is_some().then_some(p))
            .unwrap_or_else(|| (0..n).map(|_| Param::Null).collect());
        // Unshared or new, so always there.
        let Some(values) = Arc::get_mut(&mut params) else {
            return Some((portal, old));
        };
        let mut kept = 0;
        let _ = each_value(encoded, n, cut, |i, value| {
            let Some(slot) = values.get_mut(i) else {
                return;
            };
            let mut text = match std::mem::replace(slot, Param::Null) {
                Param::Text(mut t) if t.capacity() <= REUSED_TEXT => {
                    t.clear();
                    t
                }
                _ => String::new(),
            };
            *slot = match value {
                Value::Null => Param::Null,
                Value::Omitted(len) => Param::Omitted(len),
                Value::Unseen => Param::Unseen,
                Value::Bytes(value) => {
                    let binary = format(i);
                    let keep = value.len().min(MAX_PARAM);
                    let type_of = types.as_ref().and_then(|t| t.get(i)).copied();
                    let decoded = match type_of {
                        Some(oid) if binary && kept + keep <= MAX_PARAMS_KEPT => {
                            binary::text(oid, value, MAX_PARAM, &mut text)
                        }
                        _ => false,
                    };
                    if decoded {
                        kept += text.len();
                        Param::Text(text)
                    } else if binary {
                        Param::Binary(value.len())
                    } else if kept + keep > MAX_PARAMS_KEPT {
                        Param::Omitted(value.len())
                    } else {
                        kept += keep;
                        push_lossy(&mut text, &value[..keep]);
                        Param::Text(text)
                    }
                }
            };
        });
        if self.kept + slots + kept > MAX_KEPT {
            // Over the session's budget: keep only the lengths.
            for p in values.iter_mut() {
                if let Param::Text(t) = p {
                    *p = Param::Omitted(t.len());
                }
            }
            kept = 0;
        }
        self.keep_portal(portal, stmt, text, params, n, slots + kept);
        Some((portal, old))
    }

    /// Keeps a bound portal, counting `kept` bytes against the session's budget.
    fn keep_portal(
        &mut self,
        name: &str,
        statement: Arc<str>,
        text: Arc<Text>,
        params: Arc<[Param]>,
        param_count: usize,
        kept: usize,
    ) {
        if !self.portals.has_room_for(name) {
            return self.give_up(super::Lost::Names);
        }
        self.kept += kept;
        self.bindings += 1;
        self.portals.insert(
            name.to_owned(),
            Portal {
                statement,
                text,
                params,
                param_count,
                kept,
                binding: self.bindings,
                hold: Hold::Not,
                cursor: false,
            },
        );
    }
}
