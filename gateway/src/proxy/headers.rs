//! Header hygiene for proxied requests and responses (SPEC §9.7): hop-by-hop headers,
//! `X-Forwarded-For`, and the trace context.

use std::net::IpAddr;

use ganglion_core::frame::TraceContext;
use ganglion_core::trace::TraceParent;
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

/// [`HOP_BY_HOP`] as text, for the relay's parsed headers: a `HeaderName`'s text is found
/// through a match over every standard header, for each comparison.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is one of the hop-by-hop headers (any case). Headers named in `Connection`
/// are hop-by-hop too; the caller checks those.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_NAMES
        .iter()
        .any(|hop| hop.eq_ignore_ascii_case(name))
}

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

/// The trace context `headers` carry (SPEC §11): a valid first `traceparent`, with the
/// `tracestate` lines that came with it joined by commas. `None` without a valid one.
pub fn trace_from_headers(headers: &HeaderMap) -> Option<TraceContext> {
    trace_from_lines(
        headers.get(&TRACEPARENT).map(HeaderValue::as_bytes),
        headers
            .get_all(&TRACESTATE)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// [`trace_from_headers`] from the first `traceparent` line and every `tracestate` line.
pub fn trace_from_lines<'a>(
    traceparent: Option<&[u8]>,
    tracestate: impl Iterator<Item = &'a [u8]>,
) -> Option<TraceContext> {
    let traceparent = std::str::from_utf8(traceparent?).ok()?;
    TraceParent::parse(traceparent)?;
    let lines: Vec<&[u8]> = tracestate.collect();
    let tracestate = (!lines.is_empty())
        .then(|| String::from_utf8(lines.join(&b","[..])).ok())
        .flatten();
    Some(TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate,
    })
}

/// Sets the upstream's trace headers to `context`; without one, any (invalid) trace headers
/// are dropped rather than passed on.
pub fn set_trace_context(headers: &mut HeaderMap, context: Option<&TraceContext>) {
    headers.remove(&TRACEPARENT);
    headers.remove(&TRACESTATE);
    let Some(context) = context else {
        return;
    };
    if let Ok(traceparent) = HeaderValue::from_str(&context.traceparent) {
        headers.insert(TRACEPARENT.clone(), traceparent);
    }
    if let Some(Ok(state)) = context.tracestate.as_deref().map(HeaderValue::from_str) {
        headers.insert(TRACESTATE.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lists_of_hop_by_hop_headers_agree() {
        let names: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP_NAMES);
        for name in HOP_BY_HOP_NAMES {
            assert!(is_hop_by_hop(name));
            assert!(is_hop_by_hop(&name.to_ascii_uppercase()));
        }
        assert!(!is_hop_by_hop("content-length"));
        assert!(!is_hop_by_hop("t"));
    }

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
        let context = trace_from_headers(&map(&[
            ("traceparent", valid),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]))
        .expect("valid");
        assert_eq!(context.traceparent, valid);
        assert_eq!(
            context.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
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
                trace_from_headers(&map(&[("traceparent", invalid)])),
                None,
                "{invalid}"
            );
        }
    }

    #[test]
    fn an_invalid_context_is_not_passed_on_and_a_valid_one_replaces_what_was_there() {
        let mut headers = map(&[("traceparent", "garbage"), ("tracestate", "a=b")]);
        set_trace_context(&mut headers, None);
        assert!(headers.is_empty());
        let mut headers = map(&[("traceparent", "garbage"), ("tracestate", "a=b")]);
        let context = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        set_trace_context(&mut headers, Some(&context));
        assert_eq!(names(&headers), ["traceparent"]);
        assert_eq!(headers["traceparent"], context.traceparent.as_str());
    }
}
