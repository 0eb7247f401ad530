//! Container output: each line with a timestamp and stream into a size-bounded log file
//! (`<name>.log`, rotated once to `<name>.log.1`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use time::format_description::BorrowedFormatItem;

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-24T22:11:33.856404233Z`.
const TIMESTAMP: &[BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
);
use time::OffsetDateTime;

/// One line of a machine's log file: `<RFC 3339 stamp, 9 digits> <stream> <line>\n`. Pilot
/// writes its containers' lines so; the daemon writes its own (`hangar.log`) the same way.
pub fn log_record(stream: &str, line: &[u8]) -> Vec<u8> {
    // Always nine fraction digits: fixed-width stamps sort as text (RFC 3339's trimmed
    // zeros put `…49.210015Z` after `…49.210015364Z`).
    let ts = OffsetDateTime::now_utc()
        .format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000000Z".into());
    let mut record = Vec::with_capacity(ts.len() + stream.len() + line.len() + 3);
    record.extend_from_slice(ts.as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.as_bytes());
    record.push(b' ');
    record.extend_from_slice(line);
    record.push(b'\n');
    record
}

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogFile {
    pub fn open(path: PathBuf, max: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            max,
        })
    }

    /// Appends `line` (without its newline) as `<RFC 3339 time> <stream> <line>`.
    pub fn write_line(&mut self, stream: &str, line: &[u8]) -> std::io::Result<()> {
        let record = log_record(stream, line);
        if self.size + record.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let old = self.path.with_extension("log.1");
        fs::rename(&self.path, old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lines_are_stamped_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut log = LogFile::open(path.clone(), 200).unwrap();
        for i in 0..20 {
            log.write_line("stdout", format!("line {i}").as_bytes())
                .unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 200);
        assert!(text.lines().all(|l| l.contains(" stdout line ")));
        assert!(dir.path().join("app.log.1").exists());
    }
}
