//! Header hygiene for proxied requests and responses (SPEC §9.7): hop-by-hop headers,
//! `X-Forwarded-For`, and the trace context.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// W3C Trace Context headers (SPEC §11).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Headers that describe one connection, never forwarded in either direction.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The caller's address as `X-Forwarded-For` writes it: dotted IPv4, RFC 5952 IPv6 (which is
/// what `Ipv6Addr`'s `Display` gives), IPv4-mapped addresses unmapped.
pub fn forwarded_for(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

/// Sets `X-Forwarded-For` to the caller's address, or appends `, <ip>` to what was supplied
/// (several supplied lines are joined into one list first).
pub fn append_forwarded_for(headers: &mut HeaderMap, caller: IpAddr) {
    let ip = forwarded_for(caller);
    let mut list = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        list.extend_from_slice(value.as_bytes());
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(ip.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&list) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// A W3C trace context (SPEC §11): a valid `traceparent` and the `tracestate` that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: HeaderValue,
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The context carried by `headers`, if their first `traceparent` is valid.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let traceparent = headers.get(&TRACEPARENT)?;
        valid_traceparent(traceparent.as_bytes()).then(|| TraceContext {
            traceparent: traceparent.clone(),
            tracestate: headers.get(&TRACESTATE).cloned(),
        })
    }

    /// The context the upstream request carries. This is the seam for ganglion's own proxy
    /// span: once spans are recorded, this becomes the parent's trace id and flags with the
    /// span's id. Until then the caller's context passes through unchanged.
    pub fn for_upstream(self) -> TraceContext {
        self
    }

    /// Replaces any trace headers in `headers` with this context.
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent);
        match self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE.clone(), state);
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }
}

/// Sets the upstream trace context: the first valid one of `contexts`; without one, any
/// (invalid) trace headers are dropped rather than passed on.
pub fn set_trace_context(headers: &mut HeaderMap, context: Option<TraceContext>) {
    match context {
        Some(context) => context.for_upstream().apply(headers),
        None => {
            headers.remove(&TRACEPARENT);
            headers.remove(&TRACESTATE);
        }
    }
}

/// `00-<32 lowercase hex, not all zero>-<16 lowercase hex, not all zero>-<2 lowercase hex>`.
fn valid_traceparent(value: &[u8]) -> bool {
    fn hex(field: &[u8]) -> bool {
        field
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }
    fn nonzero(field: &[u8]) -> bool {
        field.iter().any(|b| *b != b'0')
    }
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return false;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    hex(trace_id) && hex(parent_id) && hex(flags) && nonzero(trace_id) && nonzero(parent_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["set-cookie", "x-kept"]);
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn forwarded_for_is_dotted_ipv4_or_rfc_5952_ipv6() {
        assert_eq!(forwarded_for("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(
            forwarded_for("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1"
        );
        assert_eq!(
            forwarded_for("2001:0db8:0000:0000:0000:0000:0000:0001".parse().unwrap()),
            "2001:db8::1"
        );
        assert_eq!(forwarded_for("::1".parse().unwrap()), "::1");
    }

    #[test]
    fn forwarded_for_is_set_or_appended() {
        let caller: IpAddr = "10.0.0.9".parse().unwrap();
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, caller);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
        let mut headers = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2, 3.3.3.3"),
        ]);
        append_forwarded_for(&mut headers, caller);
        assert_eq!(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]
        );
    }

    #[test]
    fn only_a_valid_traceparent_is_a_context() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::from_headers(&map(&[
            ("traceparent", valid),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .expect("valid");
        assert_eq!(context.traceparent, valid);
        assert_eq!(context.tracestate.unwrap(), "congo=t61rcWkgMzE");
        for invalid in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                TraceContext::from_headers(&map(&[("traceparent", invalid)])),
                None,
                "{invalid}"
            );
        }
    }

    #[test]
    fn an_invalid_context_is_not_passed_on() {
        let mut headers = map(&[("traceparent", "garbage"), ("tracestate", "a=b")]);
        set_trace_context(&mut headers, None);
        assert!(headers.is_empty());
    }
}
