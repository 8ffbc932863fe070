//! A Bind's portal and parameter values, read as text where their types
//! are known.

use std::sync::Arc;

use super::super::error::ProtocolError;
use super::super::message::{read_cstr, read_i32};
use super::names::{Portal, read_i16, shared_name};
use super::{MAX_KEPT, MAX_PARAM, MAX_PARAMS_KEPT, Param, StatementTracker, Text, binary};

impl StatementTracker {
    /// A Bind's portal and parameters; when `cut`, the body ends early and
    /// values past its end are recorded as unseen.
    pub(super) fn bind(&mut self, mut b: &[u8], cut: bool) {
        let parsed = (|| {
            let portal = read_cstr(&mut b, "Bind")?.to_owned();
            let stmt = read_cstr(&mut b, "Bind")?;
            // One lookup for the statement's name, text and types.
            let (stmt, text, types) = match self.prepared.get(stmt) {
                Some(p) => (
                    Arc::clone(&p.name),
                    Some(Arc::clone(&p.text)),
                    Some(Arc::clone(&p.types)),
                ),
                None => (shared_name(stmt), None, None),
            };
            let type_of = |i: i16| {
                let i = usize::try_from(i).ok()?;
                types.as_ref().and_then(|t| t.get(i)).copied()
            };
            // The format codes stay where they are in the message, read by index.
            let nformats = usize::try_from(read_i16(&mut b)?).unwrap_or(0);
            let formats = b.get(..2 * nformats).ok_or(ProtocolError::Malformed { what: "Bind" })?;
            b = &b[2 * nformats..];
            let format = |i: usize| {
                formats
                    .get(2 * i..2 * i + 2)
                    .and_then(|f| <[u8; 2]>::try_from(f).ok())
                    .map(i16::from_be_bytes)
            };
            let nparams = read_i16(&mut b)?;
            let mut params = Vec::new();
            let mut kept = 0;
            for i in 0..nparams {
                let len = match read_i32(&mut b, "Bind") {
                    Ok(len) => len,
                    Err(_) if cut => {
                        params.extend((i..nparams).map(|_| Param::Unseen));
                        break;
                    }
                    Err(e) => return Err(e),
                };
                if len < 0 {
                    params.push(Param::Null);
                    continue;
                }
                let len = len as usize;
                let Some(value) = b.get(..len) else {
                    if !cut {
                        return Err(ProtocolError::Malformed { what: "Bind" });
                    }
                    params.push(Param::Omitted(len));
                    params.extend((i + 1..nparams).map(|_| Param::Unseen));
                    break;
                };
                b = &b[len..];
                let binary = match nformats {
                    0 => false,
                    1 => format(0) == Some(1),
                    _ => format(i as usize) == Some(1),
                };
                let keep = len.min(MAX_PARAM);
                let decoded = match type_of(i) {
                    Some(oid) if binary && kept + keep <= MAX_PARAMS_KEPT => binary::text(oid, value, MAX_PARAM),
                    _ => None,
                };
                params.push(if let Some(text) = decoded {
                    kept += text.len();
                    Param::Text(text)
                } else if binary {
                    Param::Binary(len)
                } else if kept + keep > MAX_PARAMS_KEPT {
                    Param::Omitted(len)
                } else {
                    kept += keep;
                    Param::Text(Text::new(&value[..keep]).text)
                });
            }
            Ok::<_, ProtocolError>((portal, stmt, text, params, kept))
        })();
        let Ok((portal, stmt, text, mut params, mut kept)) = parsed else {
            return;
        };
        if let Some(old) = self.portals.remove(&portal) {
            self.kept = self.kept.saturating_sub(old.kept);
        }
        if self.kept + kept > MAX_KEPT {
            // Over the session's budget: keep only the lengths.
            for p in &mut params {
                if let Param::Text(t) = p {
                    *p = Param::Omitted(t.len());
                }
            }
            kept = 0;
        }
        let text = text.unwrap_or_else(|| Arc::new(Text::new(b"")));
        if self.portals.has_room_for(&portal) {
            self.kept += kept;
            self.portals.insert(
                portal,
                Portal {
                    statement: stmt,
                    text,
                    params: params.into(),
                    kept,
                },
            );
        }
    }
}
