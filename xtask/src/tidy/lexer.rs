//! Just enough of a Rust lexer for tidy: the words and punctuation of a file, with their
//! line numbers, outside comments, strings and character literals, so `"unsafe"` in a
//! string or a comment is never taken for the keyword.

/// A word (identifier or keyword) or a single punctuation character.
#[derive(Debug, PartialEq, Eq)]
pub struct Token<'a> {
    /// 1-based line number.
    pub line: usize,
    pub text: &'a str,
}

/// The tokens of `src` that tidy looks at. Numbers and lifetimes are dropped; an unclosed
/// string or comment ends the file (rustc reports those, tidy need not).
pub fn tokens(src: &str) -> Vec<Token<'_>> {
    let mut lx = Lexer {
        src,
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    lx.run();
    lx.out
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    out: Vec<Token<'a>>,
}

impl<'a> Lexer<'a> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.src[self.pos..].chars().nth(ahead)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.src[self.pos..].chars().next()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    self.bump();
                    self.string();
                }
                '\'' => self.quote(),
                c if c.is_ascii_digit() => self.word_chars(),
                c if c == '_' || c.is_alphabetic() => self.word(),
                c if c.is_whitespace() => {
                    self.bump();
                }
                _ => {
                    let start = self.pos;
                    self.bump();
                    self.push(start);
                }
            }
        }
    }

    fn push(&mut self, start: usize) {
        self.out.push(Token {
            line: self.line,
            text: &self.src[start..self.pos],
        });
    }

    fn line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                return;
            }
            self.bump();
        }
    }

    /// Block comments nest in Rust.
    fn block_comment(&mut self) {
        self.bump();
        self.bump();
        let mut depth = 1;
        while depth > 0 {
            match (self.bump(), self.peek(0)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    self.bump();
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.bump();
                    depth -= 1;
                }
                _ => {}
            }
        }
    }

    /// The rest of a `"..."` string, after its opening quote.
    fn string(&mut self) {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return,
                _ => {}
            }
        }
    }

    /// The rest of a raw string `r#"..."#`, at its first `#` or `"`.
    fn raw_string(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            self.bump();
            hashes += 1;
        }
        self.bump(); // the opening quote
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                for _ in 0..hashes {
                    self.bump();
                }
                return;
            }
        }
    }

    /// A character literal (`'a'`, `'\n'`, `'"'`) or a lifetime / label (`'a`).
    fn quote(&mut self) {
        self.bump();
        if self.peek(0) == Some('\\') {
            self.bump();
            self.bump(); // the escaped character, which may be a quote
            while let Some(c) = self.bump() {
                if c == '\'' {
                    return;
                }
            }
        } else if self.peek(1) == Some('\'') {
            self.bump();
            self.bump();
        }
        // A lifetime: its name is lexed as a word next, which is harmless.
    }

    /// Digits and letters: a number with its suffix (`1u8`, `0x1f`) or the rest of a word.
    fn word_chars(&mut self) {
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_alphanumeric())
        {
            self.bump();
        }
    }

    fn word(&mut self) {
        let start = self.pos;
        self.word_chars();
        let word = &self.src[start..self.pos];
        let next = self.peek(0);
        match (word, next) {
            ("r" | "br" | "cr", Some('"')) => self.raw_string(),
            ("r" | "br" | "cr", Some('#')) if matches!(self.peek(1), Some('"' | '#')) => {
                self.raw_string()
            }
            // `r#unsafe` is an identifier, not the keyword.
            ("r", Some('#')) => {
                self.bump();
                self.word_chars();
            }
            ("b" | "c", Some('"')) => {
                self.bump();
                self.string();
            }
            ("b", Some('\'')) => self.quote(),
            _ => self.push(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<(usize, &str)> {
        tokens(src).iter().map(|t| (t.line, t.text)).collect()
    }

    #[test]
    fn keywords_outside_comments_and_strings() {
        let src = "// unsafe\n/* unsafe /* nested */ unsafe */ let s = \"unsafe \\\" unsafe\";\nunsafe {}";
        assert_eq!(
            words(src),
            [
                (2, "let"),
                (2, "s"),
                (2, "="),
                (2, ";"),
                (3, "unsafe"),
                (3, "{"),
                (3, "}")
            ]
        );
    }

    #[test]
    fn raw_strings_chars_and_lifetimes() {
        let src = "r#\"unsafe \" unsafe\"# br\"unsafe\" b'\"' '\"' '\\'' fn f<'a>(x: &'a u8) { r#unsafe; 1unsafe }";
        let got: Vec<&str> = tokens(src).iter().map(|t| t.text).collect();
        assert!(!got.contains(&"unsafe"), "{got:?}");
        assert!(got.contains(&"fn") && got.contains(&"a"), "{got:?}");
    }

    #[test]
    fn lines_count_newlines_inside_strings_and_comments() {
        let src = "\"a\nb\"\n/*\n\n*/ r\"\n\" unsafe";
        assert_eq!(words(src), [(6, "unsafe")]);
    }
}
