//! The CloudEvents `authcontext` extension: who sent the event, as this service verified it.
//!
//! `authtype` (`api_key` for a bearer token, `service_account` for a client certificate) and
//! `authid` (the principal's name) are set from the verified credential before the event is
//! spooled, replacing whatever the emitter sent; without authentication (`auth.mode: none`)
//! they are removed, so a stored `authtype`/`authid` always comes from this service. An
//! emitter-sent `authclaims` is removed too: claims this service did not verify must not look
//! as if it had. The attributes are appended at the end of the event (key order otherwise
//! kept). Pure: no I/O.

use serde_json::Value;

/// The verified sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthContext<'a> {
    /// `api_key` or `service_account`.
    pub auth_type: &'a str,
    /// The principal's name.
    pub auth_id: &'a str,
}

/// Replaces the event's `authtype`/`authid` with `ctx` (removes them, and `authclaims`, when
/// `ctx` is `None`). A value that is not an object is left alone: validation refuses it.
pub fn apply(event: &mut Value, ctx: Option<AuthContext<'_>>) {
    let Value::Object(map) = event else {
        return;
    };
    for attr in ["authtype", "authid", "authclaims"] {
        map.shift_remove(attr);
    }
    if let Some(ctx) = ctx {
        map.insert("authtype".into(), Value::String(ctx.auth_type.to_owned()));
        map.insert("authid".into(), Value::String(ctx.auth_id.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sent_values_are_replaced_or_dropped() {
        let sent = json!({"source": "/s", "authtype": "user", "authid": "admin", "authclaims": "x",
                          "data": {}});
        let mut ev = sent.clone();
        apply(
            &mut ev,
            Some(AuthContext {
                auth_type: "api_key",
                auth_id: "registry",
            }),
        );
        assert_eq!(
            ev.to_string(),
            r#"{"source":"/s","data":{},"authtype":"api_key","authid":"registry"}"#
        );
        let mut ev = sent;
        apply(&mut ev, None);
        assert_eq!(ev.to_string(), r#"{"source":"/s","data":{}}"#);
        let mut not_object = json!([1]);
        apply(&mut not_object, None);
        assert_eq!(not_object, json!([1]));
    }
}
