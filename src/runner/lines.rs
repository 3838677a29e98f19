//! Splitting an output stream into bounded [`Line`]s: a pending line never holds more than
//! `max + 1` bytes, however long the agent's line is.

use super::Line;

/// Splits a byte stream into [`Line`]s, holding at most `max + 1` bytes of a pending line.
#[derive(Debug)]
pub(super) struct LineSplitter {
    max: usize,
    line: Vec<u8>,
    /// Bytes of the current line were dropped.
    overflow: bool,
}

impl LineSplitter {
    pub(super) fn new(max: usize) -> Self {
        LineSplitter {
            max,
            line: Vec::new(),
            overflow: false,
        }
    }

    pub(super) fn push(&mut self, mut chunk: &[u8], lines: &mut Vec<Line>) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            self.append(&chunk[..i]);
            lines.push(self.take(true));
            chunk = &chunk[i + 1..];
        }
        self.append(chunk);
    }

    /// The unterminated last line, if any.
    pub(super) fn finish(&mut self) -> Option<Line> {
        (!self.line.is_empty() || self.overflow).then(|| self.take(false))
    }

    fn append(&mut self, bytes: &[u8]) {
        // One byte beyond `max` is kept so a line of exactly `max` bytes ending in "\r\n" is
        // recognised as not truncated.
        let room = (self.max + 1).saturating_sub(self.line.len());
        if bytes.len() > room {
            self.overflow = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn take(&mut self, terminated: bool) -> Line {
        let mut bytes = std::mem::take(&mut self.line);
        let overflow = std::mem::replace(&mut self.overflow, false);
        if terminated && !overflow && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let truncated = overflow || bytes.len() > self.max;
        if truncated {
            bytes.truncate(char_boundary(&bytes, self.max));
        }
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Line { text, truncated }
    }
}

/// The largest cut point `<= max` that does not split a UTF-8 sequence (when `bytes` is UTF-8).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut cut = max;
    while cut > 0 && max - cut < 3 && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if is_continuation(bytes[cut]) {
        max
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut lines = Vec::new();
        for c in chunks {
            s.push(c, &mut lines);
        }
        lines.extend(s.finish());
        lines
    }

    fn line(text: &str, truncated: bool) -> Line {
        Line {
            text: text.to_owned(),
            truncated,
        }
    }
    #[test]
    fn splits_across_chunks_and_strips_crlf() {
        assert_eq!(
            split(100, &[b"ab", b"c\r\nde\n\nf", b"g"]),
            vec![
                line("abc", false),
                line("de", false),
                line("", false),
                line("fg", false)
            ]
        );
        assert_eq!(split(100, &[b""]), vec![]);
        assert_eq!(split(100, &[b"x\n"]), vec![line("x", false)]);
        // A lone trailing '\r' without '\n' is content.
        assert_eq!(split(100, &[b"x\r"]), vec![line("x\r", false)]);
    }

    #[test]
    fn truncates_long_lines_and_keeps_the_next_intact() {
        assert_eq!(
            split(4, &[b"abcd\r\n", b"abcde", b"fgh\nok\n"]),
            vec![line("abcd", false), line("abcd", true), line("ok", false)]
        );
        assert_eq!(split(4, &[b"abcd\r\r\n"]), vec![line("abcd", true)]);
        assert_eq!(split(4, &[b"abcdefgh"]), vec![line("abcd", true)]);
    }

    #[test]
    fn never_holds_more_than_max_plus_one() {
        let mut s = LineSplitter::new(10);
        let mut lines = Vec::new();
        for _ in 0..1000 {
            s.push(&[b'x'; 4096], &mut lines);
            assert!(s.line.len() <= 11);
        }
        assert!(lines.is_empty());
        assert_eq!(s.finish(), Some(line("xxxxxxxxxx", true)));
    }

    #[test]
    fn truncation_does_not_split_characters() {
        // "é" is 2 bytes, "€" 3 bytes.
        assert_eq!(split(2, &["aé\n".as_bytes()]), vec![line("a", true)]);
        assert_eq!(split(3, &["a€b\n".as_bytes()]), vec![line("a", true)]);
        assert_eq!(split(4, &["a€b\n".as_bytes()]), vec![line("a€", true)]);
        assert_eq!(
            split(3, &[b"\xff\xfe\xfd\xfc\n"]),
            vec![line("\u{FFFD}\u{FFFD}\u{FFFD}", true)]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(split(100, &[b"a\xffb\n"]), vec![line("a\u{FFFD}b", false)]);
    }
}
