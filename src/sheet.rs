//! The CSV files analysts keep in spreadsheets (labels, the cell map, `tune --format csv`),
//! read and written through the `csv` crate so that files saved by a spreadsheet program
//! work as they are.
//!
//! Reading accepts what spreadsheets write: a UTF-8 byte-order mark, quoted fields (commas,
//! quotes and line breaks inside), CRLF line ends, columns in any order (found by header
//! name, ignoring case and surrounding spaces), extra columns (ignored), and blank or
//! all-empty rows (skipped). Every problem names the line, and the column where there is one.
//!
//! Writing quotes only where needed, and keeps text from becoming a formula: a spreadsheet
//! runs a cell starting `=`, `+`, `-` or `@` (or a tab or carriage return, which some strip
//! first) as a formula, and a pseudonym is any printable ASCII, so it may start that way.
//! Such a text field is written with a leading `'` (what spreadsheets themselves use to mark
//! text), and readers drop that one `'` again, so a file round-trips unchanged. To keep that
//! exact, a field that already starts with `'`s before a formula character gets one more.
//! Numbers linewatch writes itself (figures, swept values) are written as they are.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;

/// Characters that make a spreadsheet read a cell as a formula.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

fn formula_like(s: &str) -> bool {
    s.trim_start_matches('\'').starts_with(FORMULA_START)
}

/// A text field as it should be written so that no spreadsheet runs it as a formula.
pub fn protect(s: &str) -> Cow<'_, str> {
    if formula_like(s) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The inverse of [`protect`], applied to every text field read.
pub fn unprotect(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if formula_like(rest) => rest,
        _ => s,
    }
}

/// A CSV read whole: the header's column positions and the non-blank rows.
#[derive(Debug, Clone)]
pub struct Sheet {
    columns: HashMap<String, usize>,
    header: Vec<String>,
    pub rows: Vec<SheetRow>,
}

/// One row and the line it starts on (1-based, as an editor shows it).
#[derive(Debug, Clone)]
pub struct SheetRow {
    pub line: u64,
    fields: csv::StringRecord,
}

impl Sheet {
    /// Reads `bytes` as CSV with a header row. `required` columns must be in the header.
    /// Errors are one line each, without the file name (the caller knows it).
    pub fn parse(bytes: &[u8], required: &[&str]) -> Result<Sheet, String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            // Rows may be shorter or longer than the header: extra columns are ignored and a
            // missing required field is reported by the reader of the row.
            .flexible(true)
            .from_reader(bytes);
        let mut lines = LineCounter::default();
        let mut header = None;
        let mut rows = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| describe(e, bytes, &mut lines))?;
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let line = lines.line_of(bytes, rec.position());
            if header.is_none() {
                header = Some((line, rec));
            } else {
                rows.push(SheetRow { line, fields: rec });
            }
        }
        let Some((header_line, header)) = header else {
            return Err("the file is empty (no header row)".into());
        };
        let names: Vec<String> = header
            .iter()
            .map(|h| unprotect(h.trim()).to_ascii_lowercase())
            .collect();
        let mut columns = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() {
                continue;
            }
            if let Some(first) = columns.insert(n.clone(), i) {
                return Err(format!(
                    "line {header_line}: column {} repeats the header {n:?} of column {}",
                    i + 1,
                    first + 1
                ));
            }
        }
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|r| !columns.contains_key(*r))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "line {header_line}: the header must name the column{} {} (it has {})",
                if missing.len() == 1 { "" } else { "s" },
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if names.iter().all(String::is_empty) {
                    "no names".to_string()
                } else {
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        Ok(Sheet {
            columns,
            header: names,
            rows,
        })
    }

    /// Position of a column by its (lower-case) name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    /// A field of `row`, trimmed and unprotected; `None` if the row is too short.
    pub fn get<'a>(&self, row: &'a SheetRow, column: usize) -> Option<&'a str> {
        row.fields.get(column).map(|f| unprotect(f.trim()))
    }

    /// Where a field is, for messages: `line 4, column 3 (label)`.
    pub fn at(&self, row: &SheetRow, column: usize) -> String {
        format!(
            "line {}, column {} ({})",
            row.line,
            column + 1,
            self.header.get(column).map_or("", String::as_str)
        )
    }

    /// A required field: present and not empty, else an error that names where.
    pub fn required<'a>(&self, row: &'a SheetRow, column: usize) -> Result<&'a str, String> {
        match self.get(row, column) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(format!("{}: empty", self.at(row, column))),
            None => Err(format!(
                "{}: missing (the row has {} field{})",
                self.at(row, column),
                row.fields.len(),
                if row.fields.len() == 1 { "" } else { "s" }
            )),
        }
    }
}

/// The line a record starts on. The `csv` crate's own line number is where the reader stood
/// when the record began, which is before any blank lines and before the `\n` of a CRLF; so
/// the line is counted here, from the record's byte offset past those line ends.
#[derive(Debug, Default)]
struct LineCounter {
    /// Byte offset counted up to, and the `\n`s before it.
    at: usize,
    newlines: u64,
}

impl LineCounter {
    fn line_of(&mut self, bytes: &[u8], pos: Option<&csv::Position>) -> u64 {
        let Some(pos) = pos else {
            return self.newlines + 1;
        };
        let mut start = usize::try_from(pos.byte()).map_or(bytes.len(), |b| b.min(bytes.len()));
        while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start >= self.at {
            self.newlines += bytes[self.at..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.at = start;
        }
        self.newlines + 1
    }
}

fn describe(e: csv::Error, bytes: &[u8], lines: &mut LineCounter) -> String {
    let line = e.position().map(|p| lines.line_of(bytes, Some(p)));
    let what = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            format!(
                "column {}: not UTF-8 text (save the file as CSV UTF-8)",
                err.field() + 1
            )
        }
        _ => e.to_string(),
    };
    match line {
        Some(l) => format!("line {l}: {what}"),
        None => what,
    }
}

/// A CSV writer for spreadsheets: quotes only where needed, `\n` line ends (every
/// spreadsheet reads them; the files also stay friendly to `grep` and `diff`).
pub fn writer<W: io::Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out)
}

/// A `csv` error as an I/O error, for writers that return `io::Result`.
pub fn io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_round_trips_and_stops_formulas() {
        for s in [
            "=1+1", "+44", "-x", "@sum", "'=x", "''-y", "plain", "'plain", "", "a=b",
        ] {
            let p = protect(s);
            assert!(!p.starts_with(FORMULA_START), "{s:?} -> {p:?}");
            assert_eq!(unprotect(&p), s, "{s:?} -> {p:?}");
        }
        assert_eq!(protect("=cmd"), "'=cmd");
        assert_eq!(protect("abc"), "abc");
        // A spreadsheet may save the text without the mark: still read right.
        assert_eq!(unprotect("=cmd"), "=cmd");
    }

    #[test]
    fn spreadsheet_style_file() {
        let text = "\u{feff}\"Label\",\"extra\",\"Subject\"\r\n\"deal_line\",\"a, b\",\"x\"\"y\"\r\n,,\r\n\r\n";
        let s = Sheet::parse(text.as_bytes(), &["subject", "label"]).unwrap();
        assert_eq!(s.rows.len(), 1);
        let r = &s.rows[0];
        assert_eq!(r.line, 2);
        assert_eq!(s.get(r, s.column("subject").unwrap()), Some("x\"y"));
        assert_eq!(s.get(r, s.column("label").unwrap()), Some("deal_line"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Sheet::parse(b"who,what\n", &["subject", "label"]).unwrap_err();
        assert_eq!(
            e,
            "line 1: the header must name the columns `subject`, `label` (it has `who`, `what`)"
        );
        let s = Sheet::parse(b"subject,label\n\na\n", &["subject", "label"]).unwrap();
        let e = s.required(&s.rows[0], 1).unwrap_err();
        assert_eq!(e, "line 3, column 2 (label): missing (the row has 1 field)");
        let e = Sheet::parse(b"subject,label\na,\xff\n", &[]).unwrap_err();
        assert!(e.starts_with("line 2: column 2: not UTF-8"), "{e}");
        assert!(Sheet::parse(b"a,A\n", &[]).unwrap_err().contains("repeats"));
        assert!(Sheet::parse(b"\r\n\r\n", &[])
            .unwrap_err()
            .contains("empty"));
    }
}
