//! A destination's requests waiting on disk: `--dir`/`outbox-NAME/`, one
//! file per request, named by a sequence number (`00000000000000000042.req`)
//! so that the folder's order is the order they were made in. A request is
//! written when it is made and removed once the destination took it (or
//! refused it, or it was dropped to keep under the folder's bound): a
//! backend down for hours, an agent restarted or killed meanwhile, and the
//! next start sends what is left, oldest first, before anything new.
//!
//! The folder is crossprof's own (0700, refused if another user owns it or
//! may write it: [`OutFolder::subfolder`]), and every file is read only if
//! crossprof wrote it ([`OutFolder::open_own`]). The file is still parsed as
//! untrusted bytes ([`decode`], fuzzed): a request's destination is never
//! in it, only the query added to the destination's URL, so a file can at
//! worst send a profile to the backend it was meant for.
//!
//! A file: `crossprof-request 1\n`, then `key value` lines (`query`,
//! `content-type`, `encoding`), an empty line, and the body as it is sent.

use std::io;

use crate::files::OutFolder;

/// The first line of every request file (and its format's version).
const MAGIC: &[u8] = b"crossprof-request 1\n";
/// The most a head may hold (a Pyroscope query with labels is ~300 bytes).
const MAX_HEAD: usize = 16 << 10;

/// A request as sent: its query (added to the destination's URL), content
/// type and body, gzipped or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Added to the destination's URL: empty or `?...`.
    pub query: String,
    /// `Content-Type`.
    pub content_type: String,
    /// The body is gzipped (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// The body, as sent (shared: a request waiting in memory is handed to
    /// each send attempt without a copy).
    pub body: bytes::Bytes,
}

/// Why a stored request was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequestFile {
    /// Not a request file of this version.
    #[error("it does not start with {:?}", String::from_utf8_lossy(MAGIC))]
    Magic,
    /// No end of the head within `MAX_HEAD`.
    #[error("its head has no end within {MAX_HEAD} bytes")]
    Head,
    /// A line of the head is not `key value` of a known key.
    #[error("its head has a line crossprof does not write: {0:?}")]
    Line(String),
    /// The query could redirect the request (not `?...` of URL characters).
    #[error("its query is not a URL query: {0:?}")]
    Query(String),
}

/// Whether `s` is only printable ASCII with no space (a query or a content
/// type as crossprof makes them).
fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// The file of `r`.
pub fn encode(r: &Stored) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(format!("query {}\n", r.query).as_bytes());
    out.extend_from_slice(format!("content-type {}\n", r.content_type).as_bytes());
    let encoding = if r.gzip { "gzip" } else { "identity" };
    out.extend_from_slice(format!("encoding {encoding}\n\n").as_bytes());
    out.extend_from_slice(&r.body);
    out
}

/// The request in a file's `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Stored, BadRequestFile> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(BadRequestFile::Magic)?;
    let window = &rest[..rest.len().min(MAX_HEAD)];
    let end = window
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or(BadRequestFile::Head)?;
    let head = std::str::from_utf8(&rest[..end])
        .map_err(|_| BadRequestFile::Line(String::from_utf8_lossy(&rest[..end]).into_owned()))?;
    let mut r = Stored {
        query: String::new(),
        content_type: String::new(),
        gzip: false,
        body: bytes::Bytes::copy_from_slice(&rest[end + 2..]),
    };
    let mut seen = [false; 3];
    for line in head.split('\n') {
        let bad = || BadRequestFile::Line(line.chars().take(80).collect());
        let (key, value) = line.split_once(' ').ok_or_else(bad)?;
        if !printable(value) {
            return Err(bad());
        }
        let i = match key {
            "query" => {
                let query_like = value.is_empty()
                    || (value.starts_with('?') && !value.contains([' ', '#', '\\']));
                if !query_like {
                    return Err(BadRequestFile::Query(value.chars().take(80).collect()));
                }
                r.query = value.to_owned();
                0
            }
            "content-type" => {
                r.content_type = value.to_owned();
                1
            }
            "encoding" => {
                r.gzip = match value {
                    "gzip" => true,
                    "identity" => false,
                    _ => return Err(bad()),
                };
                2
            }
            _ => return Err(bad()),
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(bad());
        }
    }
    if seen != [true; 3] {
        return Err(BadRequestFile::Line(head.chars().take(80).collect()));
    }
    Ok(r)
}

/// The name of request `seq`'s file.
fn file_name(seq: u64) -> String {
    format!("{seq:020}.req")
}

/// The sequence number of a request file's name.
fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".req")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A destination's folder of waiting requests.
#[derive(Debug)]
pub struct Outbox {
    folder: OutFolder,
    next: u64,
}

impl Outbox {
    /// The outbox in `folder`, and the requests an earlier run left in it,
    /// oldest first: (sequence number, bytes). Temporary files of a write
    /// cut short (a crash) are removed.
    pub fn open(folder: OutFolder) -> (Self, Vec<(u64, u64)>) {
        let mut left = Vec::new();
        for name in folder.names().unwrap_or_default() {
            if let Some(seq) = seq_of(&name) {
                if let Some(bytes) = folder.own_file_len(&name) {
                    left.push((seq, bytes));
                }
            } else if name.starts_with('.')
                && name.ends_with(".tmp")
                && folder.own_file_len(&name).is_some()
            {
                let _ = folder.remove(&name);
            }
        }
        left.sort_unstable();
        let next = left.last().map_or(0, |(seq, _)| seq + 1);
        (Self { folder, next }, left)
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.folder.path
    }

    /// Writes `r` as the newest request: its sequence number and the bytes
    /// the file takes.
    pub fn write(&mut self, r: &Stored) -> io::Result<(u64, u64)> {
        let seq = self.next;
        let bytes = encode(r);
        self.folder.write_file(&file_name(seq), &bytes)?;
        self.next += 1;
        Ok((seq, bytes.len() as u64))
    }

    /// Reads request `seq` (at most `max` bytes of it).
    pub fn read(&self, seq: u64, max: u64) -> io::Result<Stored> {
        let bytes = self.folder.read_own(&file_name(seq), max)?;
        decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Forgets request `seq`.
    pub fn remove(&self, seq: u64) {
        let _ = self.folder.remove(&file_name(seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Stored {
        Stored {
            query: "?name=svc%7Bpid%3D1%7D&from=1&until=2&format=pprof".into(),
            content_type: "multipart/form-data; boundary=crossprof-7e1".into(),
            gzip: true,
            body: bytes::Bytes::from_static(b"\n\n\x00binary\n\nbody"),
        }
    }

    #[test]
    fn a_request_file_reads_back_as_written() {
        let r = request();
        assert_eq!(decode(&encode(&r)), Ok(r));
        let plain = Stored {
            query: String::new(),
            gzip: false,
            body: bytes::Bytes::new(),
            ..request()
        };
        assert_eq!(decode(&encode(&plain)), Ok(plain));
    }

    #[test]
    fn a_file_that_crossprof_did_not_write_is_refused() {
        let good = encode(&request());
        assert_eq!(decode(b"crossprof-request 2\n"), Err(BadRequestFile::Magic));
        assert_eq!(decode(&good[..30]), Err(BadRequestFile::Head));
        let text = String::from_utf8_lossy(&good[..good.len() - 16]).into_owned();
        for (from, to) in [
            // A query that would change where the request goes.
            ("query ?name", "query @evil.example/?name"),
            ("query ?name", "query ?#name"),
            ("encoding gzip", "encoding br"),
            ("encoding gzip", "encoding gzip\nencoding gzip"),
            ("encoding gzip", "url http://evil.example"),
            ("content-type multipart", "content-type \u{1}multipart"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert!(decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Every key is needed.
        let missing = text.replacen("encoding gzip\n", "", 1);
        assert!(decode(missing.as_bytes()).is_err());
    }

    #[test]
    fn request_files_are_named_in_order() {
        assert_eq!(file_name(42), "00000000000000000042.req");
        assert_eq!(seq_of(&file_name(42)), Some(42));
        assert_eq!(seq_of(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for bad in [
            "42.req",
            "0000000000000000004x.req",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(seq_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_outbox_gives_back_what_an_earlier_run_left_oldest_first() {
        let dir = std::env::temp_dir().join(format!("crossprof-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = OutFolder::create(&dir).unwrap();
        let (mut a, left) = Outbox::open(root.subfolder("outbox-test").unwrap());
        assert!(left.is_empty());
        let mut r = request();
        for i in 0..3u8 {
            r.body = vec![i; 10].into();
            a.write(&r).unwrap();
        }
        a.remove(0);
        drop(a);
        let (b, left) = Outbox::open(root.subfolder("outbox-test").unwrap());
        assert_eq!(left.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(b.read(2, 1 << 20).unwrap().body, vec![2; 10]);
        assert_eq!(b.next, 3, "new requests come after the ones left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
