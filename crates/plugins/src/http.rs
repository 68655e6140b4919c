//! Outbound HTTP(S) for plugins (ABI v1.2): the allow-list of origins and one request.
//!
//! A plugin's table grants origins (`allow = ["https://hooks.example.com", "http://127.0.0.1:8080",
//! "https://*.example.org"]`): scheme, host and port, with at most a `*.` wildcard for the
//! subdomains of one domain. A URL whose origin is not listed is refused before any connection
//! is made, and so is every redirect to one: redirects are followed here, hop by hop, each hop
//! checked like the first. The client is ureq with rustls and the system's root certificates
//! (Mozilla's when the system has none); it never uses a proxy from the environment. Requests
//! are blocking and run on a blocking thread ([`super::effects`] waits for them without holding
//! the plugin runtime).

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serf_plugin_sdk::abi::{self, Status};
use ureq::http;

/// Redirects followed at most for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Methods a plugin may use.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
/// Headers that belong to the client, not the plugin.
const HOST_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
];
/// Request headers a plugin may send at most.
const MAX_HEADERS: usize = 64;

/// One allowed origin: `scheme://host[:port]`, the host possibly `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    /// Lower case; for a wildcard, the domain after `*.`.
    host: String,
    wildcard: bool,
    port: u16,
}

impl Origin {
    /// Parses `https://host[:port]` (a trailing `/` allowed); anything else is the error.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("an origin starts with http:// or https://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
            return Err("an origin is scheme://host[:port], without path, query or user".into());
        }
        let (host, wildcard) = match rest.strip_prefix("*.") {
            Some(domain) => (domain, true),
            None => (rest, false),
        };
        if host.contains('*') {
            return Err("a wildcard is only allowed as the first label (*.example.com)".into());
        }
        let uri: http::Uri = format!("{}://{host}/", if https { "https" } else { "http" })
            .parse()
            .map_err(|error| format!("not a valid origin: {error}"))?;
        let name = uri
            .host()
            .ok_or("an origin needs a host")?
            .to_ascii_lowercase();
        if wildcard && !name.contains('.') {
            return Err("a wildcard needs a domain of two labels at least (*.example.com)".into());
        }
        Ok(Origin {
            https,
            host: name,
            wildcard,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    /// Whether the origin of `uri` is this one.
    fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        if self.https != https || self.port != port {
            return false;
        }
        if self.wildcard {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{scheme}://{star}{}:{}", self.host, self.port)
    }
}

/// What a plugin's `[plugins.NAME.http]` table grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// The origins it may reach.
    pub allow: Vec<Origin>,
    /// Longest wait for one request, redirects included.
    pub timeout: Duration,
    /// Largest response body kept, in bytes; a larger one fails the call.
    pub max_response_bytes: usize,
    /// Requests of the plugin in flight at once, all its instances together.
    pub max_concurrent: usize,
    /// Requests the plugin may start per second.
    pub per_second: u32,
}

impl HttpGrant {
    /// Defaults for a table that sets only `allow`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// 1 MiB.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
    /// Four requests at once.
    pub const DEFAULT_MAX_CONCURRENT: usize = 4;
    /// Ten a second.
    pub const DEFAULT_PER_SECOND: u32 = 10;

    /// Whether the URL's origin is allowed; the parsed URL if so.
    pub fn check(&self, url: &str) -> Result<http::Uri, Refusal> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| Refusal::BadRequest(format!("not a URL: {url:?}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refusal::BadRequest(format!("not an http(s) URL: {url:?}"))),
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if authority.contains('@') {
            return Err(Refusal::BadRequest(
                "a URL with user information is refused".into(),
            ));
        }
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if self
            .allow
            .iter()
            .any(|origin| origin.allows(https, &host, port))
        {
            Ok(uri)
        } else {
            let scheme = if https { "https" } else { "http" };
            Err(Refusal::NotAllowed(format!("{scheme}://{host}:{port}")))
        }
    }
}

/// Why a request failed, and the status the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The origin (of the URL or of a redirect) is not in the table's `allow`.
    #[error("origin {0} is not allowed")]
    NotAllowed(String),
    /// A malformed URL, method or header.
    #[error("{0}")]
    BadRequest(String),
    /// The response body is over `max_response_kib`.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    /// Connecting, TLS, a timeout, or more than [`MAX_REDIRECTS`] redirects.
    #[error("{0}")]
    Failed(String),
}

impl Refusal {
    /// The status the guest sees.
    pub fn status(&self) -> Status {
        match self {
            Refusal::NotAllowed(_) => Status::Denied,
            Refusal::BadRequest(_) => Status::BadArgument,
            Refusal::TooLarge(_) => Status::TooLarge,
            Refusal::Failed(_) => Status::Unavailable,
        }
    }
}

/// The one client every plugin shares (its connection pool too): no proxy, no automatic
/// redirect, every status a response, rustls with the system's roots.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        let roots: Vec<ureq::tls::Certificate<'static>> = loaded
            .certs
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let roots = if roots.is_empty() {
            tracing::warn!("no system root certificates found; HTTPS from plugins uses Mozilla's");
            ureq::tls::RootCerts::WebPki
        } else {
            ureq::tls::RootCerts::new_with_certs(&roots)
        };
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("serf-plugin/", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .max_idle_connections_per_host(2)
            .build()
            .new_agent()
    })
}

/// Checks what can be checked before any connection: method, headers, and the first URL.
pub fn check_request(grant: &HttpGrant, request: &abi::HttpRequest) -> Result<(), Refusal> {
    if !METHODS.contains(&request.method.as_str()) {
        return Err(Refusal::BadRequest(format!(
            "method {:?} is not one of {}",
            request.method,
            METHODS.join(", ")
        )));
    }
    if request.headers.len() > MAX_HEADERS {
        return Err(Refusal::BadRequest(format!(
            "more than {MAX_HEADERS} headers"
        )));
    }
    for (name, value) in &request.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Refusal::BadRequest(format!("bad header name {name:?}")))?;
        if HOST_HEADERS.contains(&name.as_str()) {
            return Err(Refusal::BadRequest(format!(
                "header {name} is set by the host"
            )));
        }
        http::HeaderValue::from_str(value)
            .map_err(|_| Refusal::BadRequest(format!("bad value for header {name}")))?;
    }
    grant.check(&request.url).map(|_| ())
}

/// Makes the request, following allowed redirects, until `deadline` at the latest. Blocking.
pub fn execute(
    grant: &HttpGrant,
    request: abi::HttpRequest,
    deadline: Instant,
) -> Result<abi::HttpResponse, Refusal> {
    check_request(grant, &request)?;
    let mut method = request.method;
    let mut body = request.body;
    let mut uri = grant.check(&request.url)?;
    for _hop in 0..=MAX_REDIRECTS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Refusal::Failed("timed out".into()));
        }
        let mut builder = http::Request::builder()
            .method(method.as_str())
            .uri(uri.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let built = builder
            .body(body.clone())
            .map_err(|error| Refusal::BadRequest(error.to_string()))?;
        let built = agent()
            .configure_request(built)
            .timeout_global(Some(remaining))
            .build();
        let response = agent()
            .run(built)
            .map_err(|error| Refusal::Failed(error.to_string()))?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response.headers().get(http::header::LOCATION)
        {
            let location = location
                .to_str()
                .map_err(|_| Refusal::Failed("a redirect to an unreadable location".into()))?;
            let next = resolve(&uri, location)?;
            uri = grant.check(&next).map_err(|refusal| match refusal {
                Refusal::NotAllowed(origin) => {
                    Refusal::NotAllowed(format!("{origin} (a redirect)"))
                }
                other => other,
            })?;
            if status == http::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == "POST")
            {
                method = "GET".into();
                body = Vec::new();
            }
            continue;
        }
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let max = grant.max_response_bytes;
        let body = response
            .into_body()
            .into_with_config()
            .limit(max as u64)
            .read_to_vec()
            .map_err(|error| match error {
                ureq::Error::BodyExceedsLimit(_) => Refusal::TooLarge(max),
                other => Refusal::Failed(other.to_string()),
            })?;
        return Ok(abi::HttpResponse {
            status: status.as_u16(),
            headers,
            body,
        });
    }
    Err(Refusal::Failed(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

/// The absolute URL a `Location` names, relative to `base`.
fn resolve(base: &http::Uri, location: &str) -> Result<String, Refusal> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    Err(Refusal::Failed(format!(
        "a redirect to a relative location {location:?} is not followed"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: &[&str]) -> HttpGrant {
        HttpGrant {
            allow: allow.iter().map(|o| Origin::parse(o).unwrap()).collect(),
            timeout: HttpGrant::DEFAULT_TIMEOUT,
            max_response_bytes: 1024,
            max_concurrent: 1,
            per_second: 10,
        }
    }

    #[test]
    fn origins_parse_with_their_default_ports_and_refuse_paths() {
        assert_eq!(
            Origin::parse("https://Hooks.Example.com/")
                .unwrap()
                .to_string(),
            "https://hooks.example.com:443"
        );
        assert_eq!(
            Origin::parse("http://127.0.0.1:8080").unwrap().to_string(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://a.*.com",
            "https://*.com",
            "https://",
            "hooks.example.com",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_pass_and_a_wildcard_covers_subdomains_only() {
        let g = grant(&[
            "https://hooks.example.com",
            "http://127.0.0.1:8080",
            "https://*.example.org",
        ]);
        assert!(g.check("https://hooks.example.com/a?b").is_ok());
        assert!(g.check("https://HOOKS.example.com:443/").is_ok());
        assert!(g.check("http://127.0.0.1:8080/x").is_ok());
        assert!(g.check("https://a.b.example.org/").is_ok());
        for refused in [
            "http://hooks.example.com/",
            "https://hooks.example.com:8443/",
            "http://127.0.0.1:8081/",
            "https://example.org/",
            "https://badexample.org/",
            "https://hooks.example.com.evil.net/",
            "https://hooks.example.com@evil.net/",
        ] {
            assert!(g.check(refused).is_err(), "{refused}");
        }
        assert!(matches!(
            g.check("file:///etc/passwd"),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn requests_with_host_headers_or_odd_methods_are_refused_before_connecting() {
        let g = grant(&["http://127.0.0.1:9"]);
        let request = |method: &str, headers: Vec<(String, String)>| abi::HttpRequest {
            method: method.into(),
            url: "http://127.0.0.1:9/".into(),
            headers,
            ..Default::default()
        };
        assert!(check_request(&g, &request("POST", vec![])).is_ok());
        assert!(check_request(&g, &request("CONNECT", vec![])).is_err());
        assert!(check_request(&g, &request("GET", vec![("Host".into(), "x".into())])).is_err());
        assert!(check_request(&g, &request("GET", vec![("a b".into(), "x".into())])).is_err());
        assert!(check_request(&g, &request("GET", vec![("x".into(), "a\nb".into())])).is_err());
    }

    #[test]
    fn redirect_locations_resolve_against_the_current_url() {
        let base: http::Uri = "http://127.0.0.1:8080/a/b".parse().unwrap();
        assert_eq!(resolve(&base, "/c").unwrap(), "http://127.0.0.1:8080/c");
        assert_eq!(resolve(&base, "//evil.net/x").unwrap(), "http://evil.net/x");
        assert_eq!(resolve(&base, "https://x/").unwrap(), "https://x/");
        assert!(resolve(&base, "c").is_err());
    }
}
