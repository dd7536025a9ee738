//! Guest text on its way to a person: cut to a length, and control
//! characters made visible so a plugin cannot drive the terminal.

use std::borrow::Cow;

/// `text` cut to at most `max` bytes (on a character boundary), with a
/// marker saying how much was dropped.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [{} bytes truncated]",
        &text[..end],
        text.len() - end
    ))
}

/// Control characters (C0 but newline and tab, DEL, C1) written as `\u{…}`:
/// escape sequences, bells and carriage returns reach no terminal.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A byte count for people: `812 B`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// Like [`escape_controls`], newlines and tabs included: for one table cell
/// or one line.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\n' | '\t' => " ".to_owned(),
                c if c.is_control() => c.escape_unicode().to_string(),
                c => c.to_string(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary_with_a_marker() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é… [4 bytes truncated]");
    }

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(
            escape_controls("a\x1b[2Jb\x07\r\n"),
            "a\\u{1b}[2Jb\\u{7}\\u{d}\n"
        );
        assert_eq!(escape_controls("\u{9b}x"), "\\u{9b}x");
        assert_eq!(one_line("a\nb\x1b"), "a b\\u{1b}");
        assert!(matches!(escape_controls("plain é"), Cow::Borrowed(_)));
    }
}
