//! flyctl-style output: aligned tables, pretty JSON, timestamps.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A table printed as left-aligned columns separated by two spaces, header first.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank and extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                // Cells are single-line by construction; a stray newline would break alignment.
                let cell = cell.replace(['\n', '\r'], " ");
                let _ = write!(line, "{cell:<w$}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value block as in `fly machine status`: `  Key   = value`, keys padded to align.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("  {k:<w$} = {v}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Prints any JSON value pretty-printed (keys in the order received).
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON")?;
    println!("{text}");
    Ok(())
}

/// Unix milliseconds (event timestamps) as RFC 3339 UTC; the raw number if out of range.
pub fn unix_ms_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Unix seconds (lease expiry) as RFC 3339 UTC; the raw number if out of range.
pub fn unix_secs_rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["ID", "NAME", "STATE"]);
        t.row(["1857156b526dd8", "aged-thunder-7371", "started"]);
        t.row(["abc", "x", ""]);
        assert_eq!(
            t.render(),
            "ID              NAME               STATE\n\
             1857156b526dd8  aged-thunder-7371  started\n\
             abc             x\n"
        );
    }

    #[test]
    fn pads_short_rows_and_counts_chars() {
        let mut t = Table::new(["A", "B"]);
        t.row(["é"]);
        t.row(["xy", "line\nbreak", "dropped"]);
        assert_eq!(t.render(), "A   B\né\nxy  line break\n");
        assert!(!t.is_empty());
        assert!(Table::new(["A"]).is_empty());
    }

    #[test]
    fn key_value_block() {
        let s = key_values(&[("ID", "1".into()), ("Instance ID", "2".into())]);
        assert_eq!(s, "  ID          = 1\n  Instance ID = 2\n");
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(unix_ms_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            unix_ms_rfc3339(1_699_408_350_123),
            "2023-11-08T01:52:30.123Z"
        );
        assert_eq!(unix_secs_rfc3339(1_699_408_350), "2023-11-08T01:52:30Z");
        assert_eq!(unix_ms_rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
