//! Where a login may send the browser on to: a path of this console and
//! nothing a browser could read as another site. Browsers strip tabs and
//! newlines from a URL and read `\` as `/`, so `/\t/evil.example` and
//! `/\evil.example` both become `//evil.example`, another host; and a path
//! percent-encoded once or twice may be decoded by something on the way.
//! So the path is decoded until it stops changing before it is checked,
//! and anything doubtful sends the browser to `/` instead.

use percent_encoding::percent_decode_str;

/// Decoding rounds after which a path still changing is refused.
const MAX_DECODES: usize = 4;

/// `text` percent-decoded until it no longer changes; none if it does not
/// settle or is not UTF-8.
fn fully_decoded(text: &str) -> Option<String> {
    let mut current = text.to_string();
    for _ in 0..MAX_DECODES {
        let next = percent_decode_str(&current)
            .decode_utf8()
            .ok()?
            .into_owned();
        if next == current {
            return Some(current);
        }
        current = next;
    }
    None
}

/// Whether a decoded path is one of this site's, as a browser reads it.
fn safe_path(path: &str) -> bool {
    let mut chars = path.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && !path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        // Dot segments are rewritten by browsers; the console has none.
        && !path.split('/').any(|segment| segment == "." || segment == "..")
}

/// `next` if it is a path of this site, else `/`.
pub fn local_path(next: Option<&str>) -> &str {
    let Some(next) = next else { return "/" };
    // As sent: visible ASCII only (no space, tab, CR, LF, no other script's
    // look-alikes), and no backslash anywhere.
    if !next.starts_with('/') || !next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return "/";
    }
    let (path, rest) = next.split_at(next.find(['?', '#']).unwrap_or(next.len()));
    let path_ok = fully_decoded(path).is_some_and(|p| safe_path(&p));
    // What follows the path cannot change the host, but a control
    // character has no business in it either.
    let rest_ok = fully_decoded(rest).is_some_and(|r| !r.chars().any(char::is_control));
    if path_ok && rest_ok {
        next
    } else {
        "/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_followed_after_login() {
        let kept = [
            "/",
            "/apps/1400000007",
            "/apps/1/dead?reason=rejected&page=2",
            "/apps/1/dead-letter?id=a%2Fb%20c%3F%23",
            "/apps/1/dead-letter?id=%2F%2Fx",
            "/apps/1/dead#top",
            "/apps/a.b/x..y",
        ];
        for next in kept {
            assert_eq!(local_path(Some(next)), next, "{next:?}");
        }
        let refused = [
            // Scheme-relative, plainly or once a browser has read it.
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "/\\/evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "\t//evil.example",
            " //evil.example",
            // The same, percent-encoded once or more.
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%0D%0A/evil.example",
            "/%2F/evil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "/%5c/evil.example",
            "/%252F/evil.example",
            "/%25252F/evil.example",
            "/%2525252525252F/evil.example",
            "%2F%2Fevil.example",
            // Whitespace and control characters anywhere in the path.
            "/ /evil.example",
            "/%20/evil.example",
            "/\u{3000}/evil.example",
            "/%E3%80%80/evil.example",
            "/apps%00",
            "/apps\u{7f}",
            "/apps?x=%0d%0aSet-Cookie:%20a",
            "/apps?x=\\",
            // Dot segments, absolute URLs, schemes, nothing.
            "/./evil.example",
            "/../evil.example",
            "/%2e%2e/evil.example",
            "https://evil.example",
            "http:evil.example",
            "javascript:alert(1)",
            "evil.example",
            "/%ff",
            "",
        ];
        for next in refused {
            assert_eq!(local_path(Some(next)), "/", "{next:?}");
        }
        assert_eq!(local_path(None), "/");
    }
}
