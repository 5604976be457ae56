//! The methods of providers: `cradle.provider.register`,
//! `cradle.provider.unregister` and `cradle.methods` (inline: they touch
//! the table only).

use super::Providers;
use crate::error::HandlerError;
use crate::link::WorkerLink;
use crate::memo::Memo;
use crate::methods::{Entry, Handler, inline, inline_session};
use ipc_rpc::provide::{
    ListMethods, MAX_NAME_LEN, MethodInfo, Offer, Origin, RESERVED_PREFIX, Register, Unregister,
};
use ipc_rpc::{ErrorCode, Method};
use std::sync::Arc;

/// A compiled-in or builtin method, as `cradle.methods` lists it.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) schema_hash: u64,
}

impl Known {
    fn origin(&self) -> Origin {
        if self.name.starts_with(RESERVED_PREFIX) {
            Origin::Builtin
        } else {
            Origin::Compiled
        }
    }
}

/// The three methods' entries, and their own [`Known`] records.
pub(crate) fn known_self() -> Vec<Known> {
    fn k<M: Method>() -> Known {
        Known {
            id: M::ID,
            name: M::NAME,
            version: M::VERSION,
            schema_hash: M::SCHEMA_HASH,
        }
    }
    vec![k::<Register>(), k::<Unregister>(), k::<ListMethods>()]
}

/// Checks an offer's name (the rules of `ipc_rpc::provide::Offer`) and
/// that it is not one of the server's own methods.
fn check_offer(known: &[Known], offer: &Offer) -> Result<(), HandlerError> {
    let name = &offer.name;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(HandlerError::with_code(
            ErrorCode::Refused,
            format!("{name:?}: names under {RESERVED_PREFIX:?} are reserved for the server"),
        ));
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(HandlerError::with_code(
            ErrorCode::Refused,
            format!(
                "a method name has 1 to {MAX_NAME_LEN} bytes, not {}",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(HandlerError::with_code(
            ErrorCode::Refused,
            format!("{name:?}: a method name has no control characters"),
        ));
    }
    let id = offer.id();
    if let Some(k) = known.iter().find(|k| k.id == id) {
        let (code, what) = match k.origin() {
            Origin::Builtin => (ErrorCode::Refused, "a builtin method of every server"),
            _ => (ErrorCode::SchemaMismatch, "compiled into this server"),
        };
        return Err(HandlerError::with_code(
            code,
            format!(
                "{name}@{} has the method id {id:#018x} of {}@{}, {what}; a provider cannot offer it",
                offer.version, k.name, k.version
            ),
        ));
    }
    Ok(())
}

/// Rough archived size of one listed method (for the frame limit).
fn listed_size(m: &MethodInfo) -> usize {
    96 + m.name.len() + 56 * m.providers.len()
}

/// `cradle.provider.register`, `cradle.provider.unregister`,
/// `cradle.methods`; `known` lists every compiled-in and builtin method
/// (these three included), `max_payload` is the ring's frame limit.
pub(crate) fn entries(
    providers: &Arc<Providers>,
    memo: &Arc<Memo>,
    links: Arc<[WorkerLink]>,
    known: Vec<Known>,
    max_payload: usize,
) -> Vec<Entry> {
    let known = Arc::new(known);
    let (p1, p2, p3) = (
        Arc::clone(providers),
        Arc::clone(providers),
        Arc::clone(providers),
    );
    let k1 = Arc::clone(&known);
    let memo = Arc::clone(memo);
    vec![
        Entry {
            id: Register::ID,
            name: Register::NAME,
            version: Register::VERSION,
            schema_hash: Register::SCHEMA_HASH,
            handler: Handler::Inline(inline_session::<Register, _>(move |out, offer| {
                check_offer(&k1, &offer)?;
                let mut t = p1.lock();
                let r = t.register(out.session, &offer);
                p1.unlock(t);
                if r.is_ok() {
                    memo.offer_accepted(&offer);
                    tracing::info!(
                        session = out.session,
                        method = %offer.name,
                        version = offer.version,
                        concurrency = offer.concurrency,
                        memoized = offer.memoized,
                        "provider registered"
                    );
                }
                r.map_err(|(code, msg)| HandlerError::with_code(code, msg))
            })),
        },
        Entry {
            id: Unregister::ID,
            name: Unregister::NAME,
            version: Unregister::VERSION,
            schema_hash: Unregister::SCHEMA_HASH,
            handler: Handler::Inline(inline_session::<Unregister, _>(move |out, id| {
                let mut actions = Vec::new();
                let mut t = p2.lock();
                let had = t.unregister(out.session, id, &mut actions);
                p2.unlock(t);
                // The calls it held end on their callers' workers (and
                // the CANCELs go out on this one's, from its inbox).
                for a in actions {
                    let w = a.worker();
                    p2.post(a);
                    if let Some(link) = links.get(w) {
                        link.wake();
                    }
                }
                Ok(had)
            })),
        },
        Entry {
            id: ListMethods::ID,
            name: ListMethods::NAME,
            version: ListMethods::VERSION,
            schema_hash: ListMethods::SCHEMA_HASH,
            handler: Handler::Inline(inline::<ListMethods, _>(move |()| {
                let mut v: Vec<MethodInfo> = known
                    .iter()
                    .map(|k| MethodInfo {
                        name: k.name.to_owned(),
                        version: k.version,
                        id: k.id,
                        origin: k.origin() as u8,
                        schema_hash: k.schema_hash,
                        ..MethodInfo::default()
                    })
                    .collect();
                v.sort_by(|a, b| (a.origin, &a.name).cmp(&(b.origin, &b.name)));
                let provided = p3.lock().list();
                v.extend(provided);
                // Stay within one frame: the rest is cut (a person reads
                // this; thousands of methods do not fit a screen either).
                let room = max_payload / 2;
                let mut used = 64;
                let keep = v
                    .iter()
                    .take_while(|m| {
                        used += listed_size(m);
                        used <= room
                    })
                    .count();
                v.truncate(keep);
                Ok(v)
            })),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_rpc::provide::BYTES_SCHEMA;

    fn offer(name: &str) -> Offer {
        Offer {
            name: name.into(),
            version: 1,
            schema_hash: BYTES_SCHEMA,
            concurrency: 1,
            idempotent: false,
            memoized: false,
        }
    }

    fn code(known: &[Known], name: &str) -> Option<ErrorCode> {
        check_offer(known, &offer(name)).err().map(|e| e.code)
    }

    #[test]
    fn offers_of_reserved_invalid_builtin_or_compiled_in_methods_are_refused() {
        let known = vec![
            Known {
                id: ipc_rpc::method_id("app.add", 1),
                name: "app.add",
                version: 1,
                schema_hash: 5,
            },
            Known {
                id: ipc_rpc::method_id("cradle.ping", 1),
                name: "cradle.ping",
                version: 1,
                schema_hash: 0,
            },
        ];
        assert_eq!(code(&known, "app.add"), Some(ErrorCode::SchemaMismatch));
        assert_eq!(code(&known, "cradle.ping"), Some(ErrorCode::Refused));
        assert_eq!(code(&known, "cradle.anything"), Some(ErrorCode::Refused));
        assert_eq!(code(&known, ""), Some(ErrorCode::Refused));
        assert_eq!(code(&known, "tab\there"), Some(ErrorCode::Refused));
        assert_eq!(
            code(&known, &"n".repeat(MAX_NAME_LEN + 1)),
            Some(ErrorCode::Refused)
        );
        assert_eq!(code(&known, &"n".repeat(MAX_NAME_LEN)), None);
        assert_eq!(code(&known, "app.other"), None);
        let e = check_offer(&known, &offer("app.add")).unwrap_err();
        assert!(
            e.message.contains("compiled into this server"),
            "{}",
            e.message
        );
    }
}
