//! Printing in the style of Ceph's `rbd`: byte sizes (`byte_u_t`), `TextTable`, `ctime`
//! timestamps, formatted documents (`--format json|xml`, `--pretty-format`), progress lines
//! and error lines.

use std::fmt::{self, Display};
use std::io::Write;

use crate::doc::Doc;

/// A failed command: the line printed after "rbdm: " and the exit status (an errno).
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Fail::new(libc::EINVAL, msg)
    }
    /// `<context>: (<errno>) <strerror>[: <detail>]`, as rbd prints a librbd error.
    pub fn errno(code: i32, context: impl Display, detail: &str) -> Self {
        let text = strerror(code);
        let mut msg = format!("{context}: ({code}) {text}");
        let detail = detail.trim();
        if !detail.is_empty() && !detail.eq_ignore_ascii_case(&text) {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        Fail::new(code, msg)
    }
    pub fn image(e: &rbdm_image::Error, context: impl Display) -> Self {
        Fail::errno(e.errno(), context, &rbdm_store::report(e))
    }
    pub fn store(e: &rbdm_store::Error, context: impl Display) -> Self {
        Fail::errno(e.errno(), context, &rbdm_store::report(e))
    }
    pub fn io(e: &std::io::Error, context: impl Display) -> Self {
        let code = e.raw_os_error().unwrap_or(libc::EIO);
        // The io::Error text repeats strerror plus "(os error N)"; keep only what adds to it.
        let detail = if e.raw_os_error().is_some() {
            String::new()
        } else {
            e.to_string()
        };
        Fail::errno(code, context, &detail)
    }
}

/// Maps a library error to a `Fail` under a context, for `map_err`.
pub fn err<C: Display>(context: C) -> impl FnOnce(rbdm_image::Error) -> Fail {
    move |e| Fail::image(&e, context)
}

pub type CmdResult<T = ()> = Result<T, Fail>;

pub fn strerror(code: i32) -> String {
    // SAFETY: strerror returns a pointer to a static or thread-local NUL-terminated string.
    let ptr = unsafe { libc::strerror(code) };
    if ptr.is_null() {
        return format!("Unknown error {code}");
    }
    // SAFETY: the pointer is non-null and NUL-terminated, and is read before any other
    // strerror call on this thread could reuse its buffer.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Ceph's `byte_u_t`: "512 B", "1 GiB", "1.5 MiB" (at most 7 characters with the unit
/// whenever it is not an exact multiple).
pub fn byte_u(v: u64) -> String {
    const UNITS: [&str; 7] = [" B", " KiB", " MiB", " GiB", " TiB", " PiB", " EiB"];
    let mut n = v;
    let mut index = 0;
    while n >= 1024 && index < 6 {
        n /= 1024;
        index += 1;
    }
    let unit = UNITS[index];
    let mult = 1u64 << (10 * index);
    if index == 0 || v.is_multiple_of(mult) {
        return format!("{n}{unit}");
    }
    let x = v as f64 / mult as f64;
    [2, 1]
        .iter()
        .map(|precision| format!("{x:.precision$}{unit}"))
        .find(|s| s.len() <= 7)
        .unwrap_or_else(|| format!("{x:.0}{unit}"))
}

/// `ctime(3)` without the newline, in local time: "Wed Nov 25 18:52:50 2026".
pub fn ctime(secs: u64) -> String {
    let t = secs.min(i64::MAX as u64) as libc::time_t;
    // SAFETY: libc::tm is plain integers (and a pointer that may be null): all zeros is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let day = DAYS.get(tm.tm_wday as usize).unwrap_or(&"???");
    let month = MONTHS.get(tm.tm_mon as usize).unwrap_or(&"???");
    format!(
        "{day} {month} {:>2} {:02}:{:02}:{:02} {}",
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year as i64 + 1900
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Ceph's `TextTable`: columns separated by two spaces, every cell padded to the column
/// width (trailing spaces included, as rbd prints them).
pub struct Table {
    cols: Vec<(String, Align, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `cols`: (heading, heading alignment, cell alignment).
    pub fn new(cols: &[(&str, Align, Align)]) -> Self {
        Table {
            cols: cols
                .iter()
                .map(|(h, a, b)| (h.to_string(), *a, *b))
                .collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    fn widths(&self) -> Vec<usize> {
        self.cols
            .iter()
            .enumerate()
            .map(|(i, (h, _, _))| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain([h.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn pad(s: &str, width: usize, align: Align) -> String {
    let fill = " ".repeat(width.saturating_sub(s.chars().count()));
    match align {
        Align::Left => format!("{s}{fill}"),
        Align::Right => format!("{fill}{s}"),
    }
}

impl Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        let line = |cells: Vec<String>| cells.join("  ");
        let head = self
            .cols
            .iter()
            .zip(&widths)
            .map(|((h, a, _), w)| pad(h, *w, *a))
            .collect();
        writeln!(f, "{}", line(head))?;
        for row in &self.rows {
            let cells = self
                .cols
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, ((_, _, a), w))| {
                    pad(row.get(i).map(String::as_str).unwrap_or(""), *w, *a)
                })
                .collect();
            writeln!(f, "{}", line(cells))?;
        }
        Ok(())
    }
}

/// Prints a document as rbd prints a formatter: JSON or XML, then a newline.
pub fn print_doc(doc: &Doc, root: &str, xml: bool, pretty: bool) {
    let mut out = if xml {
        doc.to_xml(root, pretty)
    } else {
        doc.to_json(pretty)
    };
    out.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// rbd's `ProgressContext`: "Importing image: 42% complete..." on stderr, each rewrite
/// after a `\r`, only when the percentage grows (so 0% is never printed), then
/// "...100% complete...done." or "...<last>% complete...failed." and a newline. rbd prints it
/// whether or not stderr is a terminal; only `--no-progress` silences it.
pub struct Progress {
    label: String,
    enabled: bool,
    last: u64,
}

impl Progress {
    pub fn new(label: &str, enabled: bool) -> Self {
        Progress {
            label: label.to_string(),
            enabled,
            last: 0,
        }
    }
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let pc = if total == 0 {
            0
        } else {
            (done.min(total) as u128 * 100 / total as u128) as u64
        };
        if pc > self.last {
            self.last = pc;
            eprint!("\r{}: {}% complete...", self.label, pc);
        }
    }
    pub fn finish(&mut self) {
        if self.enabled {
            eprintln!("\r{}: 100% complete...done.", self.label);
            self.enabled = false;
        }
    }
    pub fn fail(&mut self) {
        if self.enabled {
            eprintln!("\r{}: {}% complete...failed.", self.label, self.last);
            self.enabled = false;
        }
    }
    /// Ends the line as `r` went ("done." or "failed.") and passes `r` on.
    pub fn end<T, E>(&mut self, r: Result<T, E>) -> Result<T, E> {
        match &r {
            Ok(_) => self.finish(),
            Err(_) => self.fail(),
        }
        r
    }
    /// A callback for the image library's `Progress`.
    pub fn callback(&mut self) -> impl FnMut(u64, u64) + '_ {
        move |done, total| self.update(done, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_u_matches_ceph() {
        assert_eq!(byte_u(0), "0 B");
        assert_eq!(byte_u(512), "512 B");
        assert_eq!(byte_u(1023), "1023 B");
        assert_eq!(byte_u(1024), "1 KiB");
        assert_eq!(byte_u(1 << 30), "1 GiB");
        assert_eq!(byte_u(3 << 19), "1.5 MiB");
        assert_eq!(byte_u(10239), "10 KiB");
        assert_eq!(byte_u(1536), "1.5 KiB");
        assert_eq!(byte_u((1 << 20) + 1), "1.0 MiB");
        assert_eq!(byte_u(100 * 1024 + 256), "100 KiB");
        assert_eq!(byte_u(5 * (1 << 30) / 4), "1.2 GiB");
    }

    #[test]
    fn table_pads_like_texttable() {
        let mut t = Table::new(&[
            ("NAME", Align::Left, Align::Left),
            ("SIZE", Align::Left, Align::Right),
        ]);
        t.row(vec!["a".into(), "1 GiB".into()]);
        assert_eq!(t.to_string(), "NAME  SIZE \na     1 GiB\n");
    }
}
