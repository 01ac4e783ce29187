//! The rules tidy holds every source file to, each a pure function of a file's text so it
//! can be tested on small inputs.

use std::fmt;

use super::lexer::Token;

/// A broken rule, at a file and line.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// Relative to the workspace root, with `/` separators.
    pub path: String,
    pub line: usize,
    pub rule: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}",
            self.path, self.line, self.rule, self.message
        )
    }
}

fn problem(path: &str, line: usize, rule: &'static str, message: String) -> Problem {
    Problem {
        path: path.to_string(),
        line,
        rule,
        message,
    }
}

/// Every source file opens with a `//!` line saying what it is for.
pub fn doc_line(path: &str, text: &str) -> Option<Problem> {
    if text.lines().next().is_some_and(|l| l.starts_with("//!")) {
        return None;
    }
    Some(problem(
        path,
        1,
        "doc-line",
        "the file does not open with a `//!` line saying what it is for".into(),
    ))
}

/// Lines a file under `crates/*/src` or `plugins/*/src` may have.
pub const MAX_LINES: usize = 800;

/// What the length rule says about one file: nothing, a warning (an excepted file within its
/// ceiling) or a problem.
#[derive(Debug, PartialEq, Eq)]
pub enum Length {
    Fine,
    Warning(String),
    Problem(Problem),
}

/// A file is at most [`MAX_LINES`] long, or, when `ceiling` excepts it, at most its ceiling
/// (which only ever shrinks: a file under the limit must leave the exception list).
pub fn length(path: &str, lines: usize, ceiling: Option<usize>) -> Length {
    let rule = "file-length";
    match ceiling {
        None if lines <= MAX_LINES => Length::Fine,
        None => Length::Problem(problem(
            path,
            lines,
            rule,
            format!("{lines} lines, over {MAX_LINES}: split it by subject"),
        )),
        Some(_) if lines <= MAX_LINES => Length::Problem(problem(
            path,
            1,
            rule,
            format!(
                "{lines} lines, no longer over {MAX_LINES}: remove it from LONG_FILES in \
                 xtask/src/tidy.rs"
            ),
        )),
        Some(max) if lines > max => Length::Problem(problem(
            path,
            lines,
            rule,
            format!(
                "{lines} lines, over its ceiling of {max} in LONG_FILES: split it, do not grow it"
            ),
        )),
        Some(max) => {
            let lower = if lines < max {
                format!(" (lower its ceiling in LONG_FILES to {lines})")
            } else {
                String::new()
            };
            Length::Warning(format!(
                "{path}: {lines} lines, over {MAX_LINES}; excepted up to {max} until it is split{lower}"
            ))
        }
    }
}

/// Every `unsafe` block, fn, impl or trait has a `// SAFETY:` comment on the line(s) just
/// above it (attributes may stand between); an `unsafe fn` may instead carry a `# Safety`
/// doc section, the convention for the contract its callers keep.
pub fn safety_comments(path: &str, text: &str, tokens: &[Token<'_>]) -> Vec<Problem> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Problem> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t.text != "unsafe" || out.last().is_some_and(|p| p.line == t.line) {
            continue;
        }
        let what = match tokens.get(i + 1).map(|t| t.text) {
            Some("{") => "block",
            Some(w @ ("fn" | "impl" | "trait" | "extern")) => w,
            _ => "code",
        };
        if !commented(&lines, t.line, what == "fn") {
            out.push(problem(
                path,
                t.line,
                "safety-comment",
                format!("unsafe {what} without a `// SAFETY:` comment on the line just above"),
            ));
        }
    }
    out
}

/// Whether the comment lines just above `line` (1-based) say why it is sound.
fn commented(lines: &[&str], line: usize, is_fn: bool) -> bool {
    for above in lines[..line.saturating_sub(1)].iter().rev() {
        let l = above.trim_start();
        if l.starts_with("#[") {
            continue;
        }
        if !l.starts_with("//") {
            return false;
        }
        if l.contains("SAFETY:") || (is_fn && l.starts_with("///") && l.contains("# Safety")) {
            return true;
        }
    }
    false
}

/// Whether the tokens hold the `unsafe` keyword.
pub fn has_unsafe(tokens: &[Token<'_>]) -> bool {
    tokens.iter().any(|t| t.text == "unsafe")
}

/// A crate root of a crate with no `unsafe` carries `#![forbid(unsafe_code)]`, so none
/// creeps in unreviewed.
pub fn forbids_unsafe(path: &str, text: &str) -> Option<Problem> {
    let has = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("#![forbid(") && l.contains("unsafe_code")
    });
    if has {
        return None;
    }
    Some(problem(
        path,
        1,
        "forbid-unsafe",
        "the crate has no `unsafe`: its root must say `#![forbid(unsafe_code)]`".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokens;
    use super::*;

    fn safety(src: &str) -> Vec<usize> {
        safety_comments("f.rs", src, &tokens(src))
            .iter()
            .map(|p| p.line)
            .collect()
    }

    #[test]
    fn doc_line_is_the_first_line() {
        assert_eq!(doc_line("a.rs", "//! What it is.\nfn f() {}\n"), None);
        let p = doc_line("a.rs", "use x;\n//! late\n").unwrap();
        assert_eq!((p.line, p.rule), (1, "doc-line"));
        assert!(doc_line("a.rs", "").is_some());
        assert!(doc_line("a.rs", "/// an item doc\n").is_some());
    }

    #[test]
    fn length_limit_and_ceilings() {
        assert_eq!(length("a.rs", MAX_LINES, None), Length::Fine);
        let Length::Problem(p) = length("a.rs", MAX_LINES + 1, None) else {
            panic!("over the limit must fail")
        };
        assert_eq!(p.line, MAX_LINES + 1);
        assert!(
            matches!(length("a.rs", 900, Some(900)), Length::Warning(w) if !w.contains("lower"))
        );
        assert!(
            matches!(length("a.rs", 850, Some(900)), Length::Warning(w) if w.contains("to 850"))
        );
        let Length::Problem(p) = length("a.rs", 901, Some(900)) else {
            panic!("over the ceiling must fail")
        };
        assert!(p.message.contains("ceiling of 900"), "{p}");
        let Length::Problem(p) = length("a.rs", 700, Some(900)) else {
            panic!("a stale exception must fail")
        };
        assert!(p.message.contains("remove it"), "{p}");
    }

    #[test]
    fn unsafe_needs_a_safety_comment_just_above() {
        let ok = "// SAFETY: the fd is open.\nlet r = unsafe { f() };\n\
                  // SAFETY: two lines,\n// the tag on the first.\nunsafe { g() };\n\
                  // SAFETY: attributes may stand between.\n#[allow(x)]\nunsafe impl Send for T {}\n\
                  /// # Safety\n/// The caller keeps the pointer live.\npub unsafe fn h(p: *const u8) {}\n";
        assert_eq!(safety(ok), Vec::<usize>::new());
        let bad = "let r = unsafe { f() };\n\
                   // SAFETY: not just above\n\nunsafe { g() };\n\
                   /// # Safety is for fns only\nunsafe impl Send for T {}\n\
                   // the comment says nothing\nunsafe fn h() { unsafe { i() } }\n\
                   let s = \"unsafe in a string is fine\"; // unsafe in a comment too\n";
        assert_eq!(safety(bad), [1, 4, 6, 8]);
    }

    #[test]
    fn forbid_is_found_on_its_own_line() {
        assert!(forbids_unsafe("lib.rs", "//! x\n#![forbid(unsafe_code)]\n").is_none());
        assert!(
            forbids_unsafe("lib.rs", "//! x\n#![forbid(missing_docs, unsafe_code)]\n").is_none()
        );
        assert!(
            forbids_unsafe("lib.rs", "//! forbid(unsafe_code)\n#![deny(unsafe_code)]\n").is_some()
        );
    }
}
