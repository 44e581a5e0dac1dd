//! From a client's address and a route to the URL a proxied request goes to (SPEC §9.7
//! "Target address").

use std::net::Ipv6Addr;

use http::Uri;
use http::uri::Scheme;

/// The target URL did not come out as an absolute `http`/`https` URL on the base's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTarget;

/// The base URL for a client address `A`:
///
/// | `A` | base |
/// |---|---|
/// | `http://…` or `https://…` (any case) | `A`, the scheme in lower case |
/// | an IPv6 literal, bare or in the expanded peer form | `http://[A]` |
/// | `[v6]:port`, `host`, `host:port`, IPv4 with or without port | `http://A` |
pub fn base_url(address: &str) -> String {
    let (scheme, rest, close) = base_parts(address);
    [scheme, rest, close].concat()
}

/// [`base_url`] in three parts, without allocating: the scheme (with `[` for a bare IPv6
/// address), the rest of the address, and `]` or nothing.
fn base_parts(address: &str) -> (&'static str, &str, &'static str) {
    for scheme in ["http://", "https://"] {
        if let Some(prefix) = address.get(..scheme.len())
            && prefix.eq_ignore_ascii_case(scheme)
        {
            return (scheme, &address[scheme.len()..], "");
        }
    }
    if address.contains(':') && address.parse::<Ipv6Addr>().is_ok() {
        ("http://[", address, "]")
    } else {
        ("http://", address, "")
    }
}

/// The base without its trailing `/`s, one `/`, the route without its leading `/`s; checked to
/// be an absolute `http`/`https` URL whose host is the base's.
pub fn target_url(address: &str, route: &str) -> Result<Uri, InvalidTarget> {
    let (scheme, rest, close) = base_parts(address);
    let route = route.trim_start_matches('/');
    let mut joined = String::with_capacity(scheme.len() + rest.len() + 2 + route.len());
    joined.push_str(scheme);
    joined.push_str(rest);
    joined.push_str(close);
    joined.truncate(joined.trim_end_matches('/').len());
    // The joined URL starts with the base, so its host is the base's exactly when its
    // authority is the base's: everything after `://` up to the first `/`, `?` or `#`.
    let after_scheme = joined
        .split_once("://")
        .map_or(0, |(scheme, _)| scheme.len() + 3);
    let authority_len = joined[after_scheme..]
        .find(['/', '?', '#'])
        .unwrap_or(joined.len() - after_scheme);
    joined.push('/');
    joined.push_str(route);
    let joined = bytes::Bytes::from(joined);
    let base_authority = joined.slice(after_scheme..after_scheme + authority_len);
    let uri = Uri::from_maybe_shared(joined).map_err(|_| InvalidTarget)?;
    let scheme_ok = uri.scheme() == Some(&Scheme::HTTP) || uri.scheme() == Some(&Scheme::HTTPS);
    let same_host = uri
        .authority()
        .is_some_and(|a| a.as_str().as_bytes() == base_authority && !a.host().is_empty());
    if !scheme_ok || !same_host {
        return Err(InvalidTarget);
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(address: &str, route: &str) -> String {
        target_url(address, route)
            .unwrap_or_else(|_| panic!("{address} + {route} is invalid"))
            .to_string()
    }

    #[test]
    fn base_urls_follow_the_table_of_spec_9_7() {
        assert_eq!(base_url("http://10.0.0.5:8080"), "http://10.0.0.5:8080");
        assert_eq!(
            base_url("HTTPS://svc.example/api"),
            "https://svc.example/api"
        );
        assert_eq!(base_url("Http://h"), "http://h");
        assert_eq!(base_url("::1"), "http://[::1]");
        assert_eq!(
            base_url("2001:0db8:0000:0000:0000:8a2e:0370:7334"),
            "http://[2001:0db8:0000:0000:0000:8a2e:0370:7334]"
        );
        assert_eq!(base_url("[::1]:8080"), "http://[::1]:8080");
        assert_eq!(base_url("svc.internal"), "http://svc.internal");
        assert_eq!(base_url("svc.internal:81"), "http://svc.internal:81");
        assert_eq!(base_url("10.0.0.5"), "http://10.0.0.5");
        assert_eq!(base_url("10.0.0.5:9000"), "http://10.0.0.5:9000");
    }

    #[test]
    fn routes_join_with_exactly_one_slash() {
        assert_eq!(url("http://h", "/users/1"), "http://h/users/1");
        assert_eq!(url("http://h/", "users"), "http://h/users");
        assert_eq!(url("http://h//", "//users"), "http://h/users");
        assert_eq!(url("http://h", "/"), "http://h/");
        assert_eq!(url("http://h", ""), "http://h/");
        assert_eq!(
            url("https://svc.example/api", "/v1?x=1&y=2"),
            "https://svc.example/api/v1?x=1&y=2"
        );
        assert_eq!(url("127.0.0.1:80", "/a"), "http://127.0.0.1:80/a");
        assert_eq!(
            url("2001:0db8:0000:0000:0000:8a2e:0370:7334", "/a"),
            "http://[2001:0db8:0000:0000:0000:8a2e:0370:7334]/a"
        );
        assert_eq!(url("[::1]:8080", "a"), "http://[::1]:8080/a");
        assert_eq!(
            url("http://h", "/@evil.example/x"),
            "http://h/@evil.example/x"
        );
    }

    #[test]
    fn addresses_and_routes_that_make_no_url_are_invalid() {
        for (address, route) in [
            ("http://", "/x"),
            ("", "/x"),
            ("http://h", "/a b"),
            ("h h", "/x"),
            ("fe80::1%eth0", "/x"),
            ("http://h\n", "/x"),
        ] {
            assert_eq!(
                target_url(address, route),
                Err(InvalidTarget),
                "{address:?} + {route:?}"
            );
        }
    }
}
