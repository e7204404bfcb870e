//! Pure routing: which route a request's host and path select, and what the forwarded path or
//! the redirect location become. No I/O; everything here is a function of its arguments.

use std::borrow::Cow;
use std::collections::HashMap;

/// The host part of a `Host` header (or authority), without the port, lower-cased:
/// `Example.COM:8080` → `example.com`, `[::1]:80` → `[::1]`.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let bare = if host.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop what follows them.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    }
}

/// Whether `path` falls under `prefix`: `/foo` matches `/foo` and `/foo/…` but not `/foobar`;
/// a prefix ending in `/` (and so `/` itself) matches every path that starts with it; an empty
/// prefix matches everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() || prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path forwarded upstream once `strip` is removed from the front of `path`: unchanged when
/// `strip` is empty or not a prefix of it, and never empty (`/`), always starting with `/`.
pub fn strip_path<'a>(path: &'a str, strip: &str) -> Cow<'a, str> {
    if strip.is_empty() {
        return Cow::Borrowed(path);
    }
    match path.strip_prefix(strip) {
        None => Cow::Borrowed(path),
        Some("") => Cow::Borrowed("/"),
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        Some(rest) => Cow::Owned(format!("/{rest}")),
    }
}

/// A redirect's `Location`: `url` with every `$path` replaced by the request's path and query.
pub fn redirect_location(url: &str, path_and_query: &str) -> String {
    url.replace("$path", path_and_query)
}

/// Routes indexed for lookup: by host (lower-cased), each host's candidates longest prefix
/// first; the routes with an empty host are the fallback for every host.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Vec<(String, usize)>>,
    any_host: Vec<(String, usize)>,
}

impl Router {
    /// Indexes `(host, prefix)` pairs; a lookup answers the position of the chosen pair. When
    /// two pairs are equal, the first one wins.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Router {
        let mut router = Router::default();
        for (i, (host, prefix)) in routes.into_iter().enumerate() {
            let host = normalize_host(host).into_owned();
            let entry = (prefix.to_owned(), i);
            if host.is_empty() {
                router.any_host.push(entry);
            } else {
                router.by_host.entry(host).or_default().push(entry);
            }
        }
        // Longest prefix first; a stable sort keeps the first of equal ones first.
        let order =
            |v: &mut Vec<(String, usize)>| v.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        order(&mut router.any_host);
        router.by_host.values_mut().for_each(order);
        router
    }

    /// The route for a request: among the routes for exactly this host, the longest prefix the
    /// path falls under; when none matches, the same among the routes for any host.
    /// `host` is a `Host` header as sent (port and case do not matter).
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let host = normalize_host(host);
        let longest = |candidates: &[(String, usize)]| {
            candidates
                .iter()
                .find(|(prefix, _)| prefix_matches(prefix, path))
                .map(|(_, i)| *i)
        };
        self.by_host
            .get(host.as_ref())
            .and_then(|c| longest(c))
            .or_else(|| longest(&self.any_host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:9999"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host(""), "");
        assert_eq!(normalize_host("a:b"), "a:b");
    }

    #[test]
    fn prefixes_match_whole_segments_unless_they_end_in_a_slash() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(!prefix_matches("/foo", "/fo"));
        assert!(prefix_matches("/foo/", "/foo/bar"));
        assert!(!prefix_matches("/foo/", "/foo"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("", "/anything"));
    }

    #[test]
    fn strip_never_leaves_an_empty_path() {
        assert_eq!(strip_path("/api/users", "/api"), "/users");
        assert_eq!(strip_path("/api", "/api"), "/");
        assert_eq!(strip_path("/api/x", "/api/"), "/x");
        assert_eq!(strip_path("/other", "/api"), "/other");
        assert_eq!(strip_path("/other", ""), "/other");
    }

    #[test]
    fn redirects_substitute_the_path() {
        assert_eq!(
            redirect_location("https://example.com$path", "/a?b=1"),
            "https://example.com/a?b=1"
        );
        assert_eq!(redirect_location("https://x/", "/a"), "https://x/");
    }

    #[test]
    fn exact_host_first_then_any_host_longest_prefix() {
        let r = Router::new([
            ("", "/"),
            ("", "/api"),
            ("shop.example.com", "/"),
            ("shop.example.com", "/cart"),
            ("", "/api/v2"),
        ]);
        assert_eq!(r.lookup("other", "/x"), Some(0));
        assert_eq!(r.lookup("other", "/api/users"), Some(1));
        assert_eq!(r.lookup("other", "/api/v2/x"), Some(4));
        assert_eq!(r.lookup("other", "/apiary"), Some(0));
        assert_eq!(r.lookup("Shop.Example.com:9999", "/cart/1"), Some(3));
        assert_eq!(r.lookup("shop.example.com", "/api"), Some(2));
        let no_root = Router::new([("a.com", "/x"), ("", "/y")]);
        assert_eq!(no_root.lookup("a.com", "/y"), Some(1));
        assert_eq!(no_root.lookup("a.com", "/z"), None);
        assert_eq!(no_root.lookup("b.com", "/x"), None);
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("ab"), Just("b"), Just("")].prop_map(str::to_owned)
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![Just(""), Just("x.com"), Just("y.com")].prop_map(str::to_owned)
    }

    proptest! {
        /// The router agrees with a brute-force reading of the rule: exact host, else any host;
        /// the longest matching prefix; the first of equal routes.
        #[test]
        fn lookup_is_the_longest_matching_prefix(
            routes in prop::collection::vec((host(), path()), 0..8),
            req_host in host(),
            req_path in path(),
        ) {
            let router = Router::new(routes.iter().map(|(h, p)| (h.as_str(), p.as_str())));
            let best = |want_host: &str| {
                let mut best: Option<usize> = None;
                for (i, (h, p)) in routes.iter().enumerate() {
                    if h == want_host && prefix_matches(p, &req_path)
                        && best.is_none_or(|b| p.len() > routes[b].1.len())
                    {
                        best = Some(i);
                    }
                }
                best
            };
            let expected = if req_host.is_empty() {
                best("")
            } else {
                best(&req_host).or_else(|| best(""))
            };
            prop_assert_eq!(router.lookup(&req_host, &req_path), expected);
        }

        /// A stripped path always starts with `/`, and is a suffix of the original.
        #[test]
        fn stripped_paths_are_never_empty(p in path(), s in path()) {
            let out = strip_path(&p, &s);
            prop_assert!(out.starts_with('/'));
            prop_assert!(p.ends_with(out.trim_start_matches('/')));
        }

        /// Matching never panics on arbitrary input.
        #[test]
        fn arbitrary_input_is_handled(host in ".{0,12}", p in ".{0,12}", prefix in ".{0,6}") {
            let _ = normalize_host(&host);
            let _ = prefix_matches(&prefix, &p);
            let _ = strip_path(&p, &prefix);
            let _ = Router::new([(host.as_str(), prefix.as_str())]).lookup(&host, &p);
        }
    }
}
