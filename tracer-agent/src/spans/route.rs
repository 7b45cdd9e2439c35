//! Low-cardinality span names: identifiers in URL paths become `{id}`.

/// Segments kept in a route; longer paths end in `/…`.
const MAX_SEGMENTS: usize = 12;
/// Longest segment kept verbatim.
const MAX_SEGMENT_LEN: usize = 64;

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether a path segment is an identifier rather than a route word:
/// numbers, UUIDs, and long hex strings (hashes, object ids) with a digit.
fn is_identifier(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.bytes().all(|c| c.is_ascii_digit()) {
        return true;
    }
    if is_uuid(seg) {
        return true;
    }
    seg.len() >= 8
        && seg.bytes().all(|c| c.is_ascii_hexdigit())
        && seg.bytes().any(|c| c.is_ascii_digit())
}

/// Strips the query and fragment from a request target, and reduces an
/// absolute-form target (`http://host/p`) to its path.
pub fn path_of(target: &str) -> &str {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    &t[..end]
}

/// The route template of a path: `/users/42/orders/9f8e7d6c5b` becomes
/// `/users/{id}/orders/{id}`.
pub fn route_of(path: &str) -> String {
    if !path.starts_with('/') {
        // `*` (OPTIONS) or authority-form (CONNECT): keep it short.
        return if path == "*" {
            "*".into()
        } else {
            "{authority}".into()
        };
    }
    let mut out = String::with_capacity(path.len().min(128));
    for (i, seg) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        out.push('/');
        if is_identifier(seg) {
            out.push_str("{id}");
        } else if seg.len() > MAX_SEGMENT_LEN {
            out.push_str("{long}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            ("/", "/"),
            ("/users/42", "/users/{id}"),
            (
                "/orders/123e4567-e89b-12d3-a456-426614174000/items",
                "/orders/{id}/items",
            ),
            ("/blob/9f8e7d6c5b4a", "/blob/{id}"),
            ("/static/deadbeef", "/static/deadbeef"),
            ("/v1/api", "/v1/api"),
            ("/a/b/", "/a/b/"),
        ];
        for (p, want) in cases {
            assert_eq!(route_of(p), want, "{p}");
        }
        assert_eq!(route_of("*"), "*");
        let long = "/x".repeat(40);
        assert!(route_of(&long).ends_with("/…"));
    }

    #[test]
    fn paths() {
        assert_eq!(path_of("/a/b?c=1#f"), "/a/b");
        assert_eq!(path_of("http://h:1/x?y"), "/x");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(path_of("*"), "*");
    }
}
