//! Text the worker writes about what producers and the service sent: cut
//! to a bound with a marker, so that one long value never makes a header,
//! a log line or a reason long.

/// `text` cut to at most `max` bytes at a character boundary, with a marker
/// that says how long it was; short text as it is.
pub fn cut_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = format!(" ... [cut: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// Producer text quoted in a reason: at most `max` characters of it, and
/// its length when it was longer, so that one long value cannot make the
/// reason long.
pub fn quote_cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes)", &text[..end], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_a_marker_at_a_character_boundary() {
        assert_eq!(cut_text("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = cut_text(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with(" ... [cut: 2000 bytes in all]"), "{cut}");
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn quoted_producer_text_is_bounded() {
        assert_eq!(quote_cut("TIMTextElem", 64), "\"TIMTextElem\"");
        let long = "A".repeat(17_000);
        let quoted = quote_cut(&long, 64);
        assert_eq!(quoted, format!("\"{}\"... (17000 bytes)", "A".repeat(64)));
    }
}
