//! What the console's requests ask for, parsed and checked: the dead
//! letters' filter (reason, code, age), the page, and the jobs an action
//! is for. Query strings and forms come as name/value pairs; a name the
//! console does not know, or a value it cannot read, is refused with words
//! saying which, so a typo never widens a selection silently.

use crate::ops::dlq::Selection;

/// Most rows on a page.
pub const MAX_PER_PAGE: usize = 500;
/// Rows on a page unless asked.
pub const PER_PAGE: usize = 50;

/// Name/value pairs of a query string or a form, in order.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(text: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(text).into_owned().collect())
    }

    /// The first non-empty value of `name` (a form sends empty fields).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    /// Every non-empty value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Refuses a name not in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(format!(
                "unknown parameter {k:?}; known: {}",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// The names a filter reads.
pub const FILTER_NAMES: [&str; 4] = ["reason", "code", "older_than", "newer_than"];

/// Which dead letters a table shows or an action takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub reason: Option<String>,
    pub code: Option<i64>,
    pub older_than: Option<i64>,
    pub newer_than: Option<i64>,
}

impl Filter {
    pub fn parse(params: &Params) -> Result<Self, String> {
        let reason = params.get("reason").map(str::to_string);
        if reason.as_ref().is_some_and(|r| r.len() > 200) {
            return Err("reason is too long (200 characters at most)".into());
        }
        let code = params
            .get("code")
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| format!("code must be an ErrorCode (a whole number), not {c:?}"))
            })
            .transpose()?;
        let age = |name: &str| params.get(name).map(|v| parse_age(name, v)).transpose();
        Ok(Self {
            reason,
            code,
            older_than: age("older_than")?,
            newer_than: age("newer_than")?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The same criteria as a selection of the dead-letter queue.
    pub fn selection(&self) -> Selection {
        Selection {
            reason: self.reason.clone(),
            code: self.code,
            older_than_secs: self.older_than,
            newer_than_secs: self.newer_than,
            ..Selection::default()
        }
    }

    /// The filter's fields that are set, as a form or a link spells them.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(reason) = &self.reason {
            pairs.push(("reason", reason.clone()));
        }
        if let Some(code) = self.code {
            pairs.push(("code", code.to_string()));
        }
        if let Some(secs) = self.older_than {
            pairs.push(("older_than", format_age(secs)));
        }
        if let Some(secs) = self.newer_than {
            pairs.push(("newer_than", format_age(secs)));
        }
        pairs
    }

    /// The filter in words, for a confirmation and the log.
    pub fn describe(&self) -> String {
        let words: Vec<String> = self
            .pairs()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if words.is_empty() {
            "every dead letter".into()
        } else {
            words.join(" ")
        }
    }
}

/// A query string of `pairs` (values escaped).
pub fn query(pairs: &[(&str, String)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// An age: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_age(name: &str, text: &str) -> Result<i64, String> {
    let bad = || format!("{name} must be an age like 90s, 15m, 2h or 3d, not {text:?}");
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit.to_ascii_lowercase() {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)
}

/// An age in the largest unit that says it exactly.
pub fn format_age(secs: i64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// An age for reading: the two largest units.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The page asked for (1 unless said) and the rows on it.
pub fn page(params: &Params, per_page_default: usize) -> Result<(usize, usize), String> {
    let number = |name: &str, default: usize, max: usize| -> Result<usize, String> {
        match params.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{name} must be a whole number from 1 to {max}, not {v:?}")),
        }
    };
    Ok((
        number("page", 1, usize::MAX)?,
        number("per_page", per_page_default, MAX_PER_PAGE)?,
    ))
}

/// The pages `matching` rows fill (at least one, empty).
pub fn pages(matching: usize, per_page: usize) -> usize {
    matching.div_ceil(per_page.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        Params::parse(q.as_bytes())
    }

    #[test]
    fn a_filter_reads_reason_code_and_ages() {
        let f = Filter::parse(&params(
            "reason=rejected&code=10004&older_than=2h&newer_than=&x=",
        ))
        .unwrap();
        assert_eq!(
            f,
            Filter {
                reason: Some("rejected".into()),
                code: Some(10004),
                older_than: Some(7200),
                newer_than: None,
            }
        );
        assert_eq!(f.describe(), "reason=rejected code=10004 older_than=2h");
        assert_eq!(
            query(&f.pairs()),
            "reason=rejected&code=10004&older_than=2h"
        );
        let s = f.selection();
        assert_eq!(
            (s.reason.as_deref(), s.code, s.older_than_secs),
            (Some("rejected"), Some(10004), Some(7200))
        );
        assert!(Filter::parse(&params("")).unwrap().is_empty());
        assert_eq!(Filter::default().describe(), "every dead letter");
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let err = |q: &str| Filter::parse(&params(q)).unwrap_err();
        assert!(err("code=abc").contains("code must be an ErrorCode"));
        assert!(err("older_than=5x").contains("older_than must be an age"));
        assert!(err("newer_than=-5").contains("newer_than"));
        assert!(err("older_than=h").contains("older_than"));
        assert!(err("older_than=99999999999999999d").contains("older_than"));
        assert!(err(&format!("reason={}", "r".repeat(201))).contains("too long"));
        assert!(params("reason=a&colour=red")
            .only(&FILTER_NAMES)
            .unwrap_err()
            .contains("\"colour\""));
        assert!(params("reason=a").only(&FILTER_NAMES).is_ok());
    }

    #[test]
    fn ages_read_and_print_in_units() {
        assert_eq!(parse_age("a", "90"), Ok(90));
        assert_eq!(parse_age("a", "90s"), Ok(90));
        assert_eq!(parse_age("a", "15m"), Ok(900));
        assert_eq!(parse_age("a", "3D"), Ok(259_200));
        assert_eq!(format_age(259_200), "3d");
        assert_eq!(format_age(5400), "90m");
        assert_eq!(format_age(61), "61s");
        assert_eq!(human_age(3725), "1h 2m");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(90_000), "1d 1h");
    }

    #[test]
    fn pages_are_checked() {
        assert_eq!(page(&params(""), 50), Ok((1, 50)));
        assert_eq!(page(&params("page=3&per_page=10"), 50), Ok((3, 10)));
        assert!(page(&params("page=0"), 50).is_err());
        assert!(page(&params("page=x"), 50).is_err());
        assert!(page(&params("per_page=501"), 50).is_err());
        assert_eq!(pages(0, 50), 1);
        assert_eq!(pages(101, 50), 3);
        let ids = params("id=a&id=&id=b%20c").all("id");
        assert_eq!(ids, ["a", "b c"]);
    }
}
