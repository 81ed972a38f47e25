//! File source for `replay` and `normalize`: Event Hubs bodies from files
//! and directories.
//!
//! Accepted layouts:
//! - a JSON file holding one body (`{"records":[…]}`, an array, or one
//!   record), possibly pretty-printed;
//! - NDJSON: one body or one record per line (this also covers the
//!   `PT1H.json` files a diagnostic setting writes to a storage account,
//!   which hold one record per line);
//! - any of those gzip-compressed (`.gz`, or detected by the gzip magic);
//! - directories, walked recursively in sorted order (so the
//!   `insights-activity-logs/…/y=/m=/d=/h=/m=/PT1H.json` layout replays in
//!   time order), reading `*.json`, `*.ndjson`, `*.jsonl`, `*.log` and their
//!   `.gz` variants.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a file or directory")]
    NotFound { path: PathBuf },
}

/// One body read from a file, with its location for error messages and
/// alert positions.
#[derive(Debug)]
pub struct FileBody<'a> {
    pub path: &'a Path,
    /// 1-based line for NDJSON files; `None` when the file is one body.
    pub line: Option<u64>,
    pub bytes: &'a [u8],
}

const EXTENSIONS: &[&str] = &["json", "ndjson", "jsonl", "log"];

/// Expands paths (files and directories) into the list of files to read,
/// sorted within each directory. `-` stands for standard input.
///
/// # Errors
/// A path that does not exist or a directory that cannot be listed.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FileSourceError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" || p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            return Err(FileSourceError::NotFound { path: p.clone() });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FileSourceError> {
    let io = |source| FileSourceError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_event_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_event_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(".gz").unwrap_or(name);
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// Reads a whole file (decompressing gzip) into memory.
///
/// # Errors
/// I/O errors, or a corrupt gzip stream, naming the file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, FileSourceError> {
    let io = |source| FileSourceError::Io {
        path: path.to_owned(),
        source,
    };
    let mut raw = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut raw).map_err(io)?;
    } else {
        raw = std::fs::read(path).map_err(io)?;
    }
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        return Ok(out);
    }
    Ok(raw)
}

/// Splits file content into bodies: the whole content when it is one JSON
/// value (possibly spanning lines), else one body per non-empty line.
pub fn bodies<'a>(path: &'a Path, content: &'a [u8]) -> Vec<FileBody<'a>> {
    let trimmed = trim_ascii(content);
    if trimmed.is_empty() {
        return Vec::new();
    }
    let has_inner_newline = memchr::memchr(b'\n', trimmed).is_some();
    if !has_inner_newline || serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return vec![FileBody {
            path,
            line: None,
            bytes: trimmed,
        }];
    }
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line_trimmed = trim_ascii(line);
            (!line_trimmed.is_empty()).then_some(FileBody {
                path,
                line: Some(i as u64 + 1),
                bytes: line_trimmed,
            })
        })
        .collect()
}

/// Calls `each` with every body of a file, in order: exactly the bodies
/// [`bodies`] splits [`read_file`]'s content into, but an NDJSON file
/// (plain or gzip, or standard input) is read one line at a time, so memory
/// does not grow with the file. Anything else (one JSON value spanning
/// lines) is read whole, as [`read_file`] does.
///
/// # Errors
/// I/O errors and corrupt gzip streams (naming the file), and whatever
/// `each` returns.
pub fn for_each_body<E: From<FileSourceError>>(
    path: &Path,
    mut each: impl FnMut(FileBody<'_>) -> Result<(), E>,
) -> Result<(), E> {
    use std::io::BufRead;
    let io = |source| FileSourceError::Io {
        path: path.to_owned(),
        source,
    };
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(io)?)
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, raw);
    let gzip = reader.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn BufRead> = if gzip {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    };

    // Everything up to and including the first non-blank line.
    let mut head: Vec<u8> = Vec::new();
    let mut line_no: u64 = 0;
    let first_start = loop {
        let start = head.len();
        if reader.read_until(b'\n', &mut head).map_err(io)? == 0 {
            return Ok(()); // blank file: no bodies
        }
        line_no += 1;
        if !trim_ascii(&head[start..]).is_empty() {
            break start;
        }
    };
    let first_line = line_no;
    let first = trim_ascii(&head[first_start..]);
    if serde_json::from_slice::<serde::de::IgnoredAny>(first).is_err() {
        // Not NDJSON (or a broken first line): split the whole content
        // exactly as `bodies` does.
        let mut content = head;
        reader.read_to_end(&mut content).map_err(io)?;
        for body in bodies(path, &content) {
            each(body)?;
        }
        return Ok(());
    }
    // The first line is a complete JSON value, so the content is one body
    // only if nothing but blank lines follow; else one body per line.
    let mut line: Vec<u8> = Vec::new();
    let mut first_pending = true;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        line_no += 1;
        let body = trim_ascii(&line);
        if body.is_empty() {
            continue;
        }
        if first_pending {
            first_pending = false;
            each(FileBody {
                path,
                line: Some(first_line),
                bytes: trim_ascii(&head[first_start..]),
            })?;
        }
        each(FileBody {
            path,
            line: Some(line_no),
            bytes: body,
        })?;
    }
    if first_pending {
        each(FileBody {
            path,
            line: None,
            bytes: trim_ascii(&head[first_start..]),
        })?;
    }
    Ok(())
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_body_multiline_ndjson_and_gzip() {
        let p = Path::new("x.json");
        let pretty = b"{\n  \"records\": [\n    {\"a\": 1}\n  ]\n}\n";
        let b = bodies(p, pretty);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].line, None);

        let nd = b"{\"a\":1}\n\n{\"b\":2}\n{broken\n";
        let b = bodies(p, nd);
        assert_eq!(
            b.iter().map(|b| b.line).collect::<Vec<_>>(),
            [Some(1), Some(3), Some(4)]
        );

        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("PT1H.json.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, nd).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_file(&gz).unwrap(), nd);
    }

    /// Streaming gives exactly the bodies of reading whole files.
    #[test]
    fn for_each_body_matches_bodies_of_read_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[&[u8]] = &[
            b"",
            b"\n \n",
            b"{\"a\":1}",
            b"{\"a\":1}\n",
            b"\n\n{\"a\":1}\n\n  \n",
            b"{\"a\":1}\n\n{\"b\":2}\n{broken\n",
            b"{broken\n{\"a\":1}\n",
            b"{\n  \"records\": [\n    {\"a\": 1}\n  ]\n}\n",
            b"1\n2",
            b"{\"a\":1} {\"b\":2}",
            b"\xef\xbb\xbf{\"a\":1}\n{\"b\":2}\n",
            b"{\"a\":1}\r\n{\"b\":2}\r\n",
        ];
        for (i, content) in cases.iter().enumerate() {
            for gz in [false, true] {
                let path = dir.path().join(format!("case-{i}-{gz}.ndjson"));
                let bytes = if gz {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut enc, content).unwrap();
                    enc.finish().unwrap()
                } else {
                    content.to_vec()
                };
                std::fs::write(&path, bytes).unwrap();
                let whole = read_file(&path).unwrap();
                let expected: Vec<(Option<u64>, Vec<u8>)> = bodies(&path, &whole)
                    .into_iter()
                    .map(|b| (b.line, b.bytes.to_vec()))
                    .collect();
                let mut streamed = Vec::new();
                for_each_body::<FileSourceError>(&path, |b| {
                    streamed.push((b.line, b.bytes.to_vec()));
                    Ok(())
                })
                .unwrap();
                assert_eq!(streamed, expected, "case {i} (gzip: {gz})");
            }
        }
    }

    #[test]
    fn directories_are_walked_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("y=2025/m=03/d=01/h=10/m=00");
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join("PT1H.json"), "{}").unwrap();
        std::fs::write(dir.path().join("b.ndjson"), "{}").unwrap();
        std::fs::write(dir.path().join("a.json.gz"), "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let files = expand_paths(&[dir.path().to_owned()]).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "a.json.gz",
                "b.ndjson",
                "y=2025/m=03/d=01/h=10/m=00/PT1H.json"
            ]
        );
        assert!(expand_paths(&[dir.path().join("missing")]).is_err());
    }
}
