//! Connection strings.
//!
//! ```text
//! dsn       = scheme "://" [ application [ ":" password ] "@" ] host [ ":" port ] [ path ] [ "?" params ]
//! scheme    = "singyeong"      websocket             (default port 4000)
//!           | "ssingyeong"     websocket over TLS    (default port 443)
//!           | "ganglion+tcp"   raw TCP framing       (default port 4001)
//!           | "ganglion+tls"   raw TCP over TLS      (default port 4001)
//! params    = param *( "&" param )
//! param     = "encoding=" ( "json" | "msgpack" )    default json
//!           | "client_id=" id                        default: chosen by the builder
//! ```
//!
//! As in the 신경 clients (`singyeong://app:password@host:port`), the user part is the
//! **application id** and the password is the identify `auth`. Both are percent-decoded, so
//! a password may contain `@`, `:` or `/` written as `%40`, `%3A`, `%2F`. `host` is a name, an
//! IPv4 address or a bracketed IPv6 address (`[::1]`). A websocket `path` replaces the
//! default `/gateway/websocket` (for a gateway behind a proxy under a prefix); the TCP
//! schemes take no path. Unknown parameters are refused, so a typo is not silently ignored.

use std::fmt;

/// Which transport a DSN selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `singyeong://`: a websocket on the HTTP listener.
    WebSocket,
    /// `ganglion+tcp://`: the raw TCP transport (SPEC §2.2).
    Tcp,
}

/// The wire encoding. (ganglion also speaks ETF, for Erlang clients; this client does not.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    #[default]
    Json,
    Msgpack,
}

impl Encoding {
    /// The name used in DSNs and in the websocket query string.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed DSN.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub transport: Transport,
    pub tls: bool,
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// The websocket path (`/gateway/websocket` unless the DSN names one).
    pub path: String,
    pub encoding: Encoding,
    /// The application id from the user part, if any.
    pub application_id: Option<String>,
    /// The password from the user part, if any: sent as identify `auth`.
    pub password: Option<String>,
    /// The `client_id` parameter, if any.
    pub client_id: Option<String>,
}

// The password stays out of logs and panics.
impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsn")
            .field("transport", &self.transport)
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("encoding", &self.encoding)
            .field("application_id", &self.application_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Why a DSN was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DSN: {0}")]
pub struct DsnError(pub String);

fn err(message: impl Into<String>) -> DsnError {
    DsnError(message.into())
}

/// The websocket path ganglion serves.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/gateway/websocket";

impl Dsn {
    /// Parses a DSN (grammar in the module documentation).
    pub fn parse(input: &str) -> Result<Dsn, DsnError> {
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| err(format!("expected SCHEME://HOST:PORT, got {input:?}")))?;
        let (transport, tls, default_port) = match scheme {
            "singyeong" => (Transport::WebSocket, false, 4000),
            "ssingyeong" => (Transport::WebSocket, true, 443),
            "ganglion+tcp" => (Transport::Tcp, false, 4001),
            "ganglion+tls" => (Transport::Tcp, true, 4001),
            other => {
                return Err(err(format!(
                    "unknown scheme {other:?} (expected singyeong, ssingyeong, ganglion+tcp or ganglion+tls)"
                )));
            }
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (application_id, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                let user = percent_decode(user)?;
                let pass = pass.map(percent_decode).transpose()?;
                ((!user.is_empty()).then_some(user), pass)
            }
        };
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(format!("invalid port {p:?}")))?,
            None => default_port,
        };
        let path = match (transport, path) {
            (_, "" | "/") => DEFAULT_WEBSOCKET_PATH.to_owned(),
            (Transport::WebSocket, p) => p.to_owned(),
            (Transport::Tcp, p) => {
                return Err(err(format!("the TCP transport takes no path, got {p:?}")));
            }
        };
        let mut dsn = Dsn {
            transport,
            tls,
            host,
            port,
            path,
            encoding: Encoding::Json,
            application_id,
            password,
            client_id: None,
        };
        if let Some(query) = query {
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                match &*key {
                    "encoding" => {
                        dsn.encoding = match &*value {
                            "json" => Encoding::Json,
                            "msgpack" => Encoding::Msgpack,
                            other => {
                                return Err(err(format!(
                                    "unsupported encoding {other:?} (expected json or msgpack)"
                                )));
                            }
                        }
                    }
                    "client_id" => dsn.client_id = Some(value.into_owned()),
                    other => {
                        return Err(err(format!(
                            "unknown parameter {other:?} (expected encoding or client_id)"
                        )));
                    }
                }
            }
        }
        Ok(dsn)
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The websocket URL this DSN connects to (`ws://` or `wss://`).
    pub fn websocket_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}?encoding={}",
            self.authority(),
            self.path,
            self.encoding
        )
    }
}

impl std::str::FromStr for Dsn {
    type Err = DsnError;
    fn from_str(s: &str) -> Result<Dsn, DsnError> {
        Dsn::parse(s)
    }
}

// The DSN as text, password redacted: what logs and error messages show.
impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.transport, self.tls) {
            (Transport::WebSocket, false) => "singyeong",
            (Transport::WebSocket, true) => "ssingyeong",
            (Transport::Tcp, false) => "ganglion+tcp",
            (Transport::Tcp, true) => "ganglion+tls",
        };
        write!(f, "{scheme}://")?;
        if let Some(app) = &self.application_id {
            write!(f, "{app}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        write!(f, "{}", self.authority())?;
        if self.transport == Transport::WebSocket && self.path != DEFAULT_WEBSOCKET_PATH {
            write!(f, "{}", self.path)?;
        }
        write!(f, "?encoding={}", self.encoding)
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<&str>), DsnError> {
    if hostport.is_empty() {
        return Err(err("missing host"));
    }
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| err(format!("unclosed '[' in {hostport:?}")))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(format!("invalid IPv6 address {host:?}")));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err(format!("unexpected {p:?} after ']'")))?,
            ),
        };
        return Ok((host.to_owned(), port));
    }
    match hostport.split_once(':') {
        Some((_, p)) if p.contains(':') => Err(err(format!(
            "an IPv6 host must be in brackets, as in [::1]:4000, got {hostport:?}"
        ))),
        Some(("", _)) => Err(err("missing host")),
        Some((h, p)) => Ok((h.to_owned(), Some(p))),
        None => Ok((hostport.to_owned(), None)),
    }
}

fn percent_decode(input: &str) -> Result<String, DsnError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| err("invalid percent escape in the user part"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err("the user part is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_websocket_dsn_gets_the_defaults() {
        let dsn = Dsn::parse("singyeong://localhost").unwrap();
        assert_eq!(dsn.transport, Transport::WebSocket);
        assert!(!dsn.tls);
        assert_eq!(dsn.authority(), "localhost:4000");
        assert_eq!(dsn.encoding, Encoding::Json);
        assert_eq!(dsn.application_id, None);
        assert_eq!(dsn.password, None);
        assert_eq!(
            dsn.websocket_url(),
            "ws://localhost:4000/gateway/websocket?encoding=json"
        );
    }

    #[test]
    fn the_user_part_is_the_application_and_the_password_is_the_auth() {
        let dsn =
            Dsn::parse("ssingyeong://api:s3cr%40t%3A1@gw.example:8443?encoding=msgpack").unwrap();
        assert!(dsn.tls);
        assert_eq!(dsn.application_id.as_deref(), Some("api"));
        assert_eq!(dsn.password.as_deref(), Some("s3cr@t:1"));
        assert_eq!(dsn.encoding, Encoding::Msgpack);
        assert_eq!(
            dsn.websocket_url(),
            "wss://gw.example:8443/gateway/websocket?encoding=msgpack"
        );
        assert_eq!(
            dsn.to_string(),
            "ssingyeong://api:***@gw.example:8443?encoding=msgpack"
        );
        assert!(!format!("{dsn:?}").contains("s3cr"));
    }

    #[test]
    fn tcp_schemes_default_to_port_4001() {
        let tcp = Dsn::parse("ganglion+tcp://10.0.0.1").unwrap();
        assert_eq!(
            (tcp.transport, tcp.tls, tcp.port),
            (Transport::Tcp, false, 4001)
        );
        let tls = Dsn::parse("ganglion+tls://[::1]:5000?encoding=msgpack&client_id=w-1").unwrap();
        assert_eq!((tls.transport, tls.tls), (Transport::Tcp, true));
        assert_eq!(tls.host, "::1");
        assert_eq!(tls.authority(), "[::1]:5000");
        assert_eq!(tls.client_id.as_deref(), Some("w-1"));
    }

    #[test]
    fn a_websocket_path_replaces_the_default() {
        let dsn = Dsn::parse("singyeong://h:80/ganglion/gateway/websocket").unwrap();
        assert_eq!(
            dsn.websocket_url(),
            "ws://h:80/ganglion/gateway/websocket?encoding=json"
        );
    }

    #[test]
    fn bad_dsns_are_refused_with_the_reason() {
        for (input, reason) in [
            ("localhost:4000", "expected SCHEME://HOST:PORT"),
            ("http://localhost", "unknown scheme \"http\""),
            ("singyeong://", "missing host"),
            ("singyeong://h:0", "invalid port \"0\""),
            ("singyeong://h:port", "invalid port"),
            ("singyeong://::1:4000", "must be in brackets"),
            ("singyeong://h?encoding=etf", "unsupported encoding \"etf\""),
            (
                "singyeong://h?encodng=json",
                "unknown parameter \"encodng\"",
            ),
            ("ganglion+tcp://h/x", "takes no path"),
            ("singyeong://a%zz@h", "invalid percent escape"),
        ] {
            let error = Dsn::parse(input).unwrap_err().to_string();
            assert!(error.contains(reason), "{input}: {error}");
        }
    }
}
