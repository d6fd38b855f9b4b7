//! A ZIP file written on a blocking-pool thread from pieces sent by the async job: the
//! job streams database pages in, the thread compresses and writes them, and at most a few
//! pieces are in flight, so memory stays bounded whatever the size of the export.

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::exports::EXPORT_FILE_MODE;

/// Pieces in flight between the job and the writer thread.
const IN_FLIGHT: usize = 4;

enum Piece {
    File(&'static str),
    Data(Vec<u8>),
}

/// The file under the ZIP writer. After its first error it swallows everything: the error
/// has reached the job (which removes the file), and `ZipWriter`'s drop, finalising into it,
/// then neither writes more nor complains on stderr.
struct Out {
    file: BufWriter<std::fs::File>,
    failed: bool,
}

impl Out {
    fn guard<T>(&mut self, r: io::Result<T>, discarded: T) -> io::Result<T> {
        if self.failed {
            return Ok(discarded);
        }
        if r.is_err() {
            self.failed = true;
        }
        r
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = if self.failed {
            Ok(buf.len())
        } else {
            self.file.write(buf)
        };
        self.guard(r, buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = if self.failed {
            Ok(())
        } else {
            self.file.flush()
        };
        self.guard(r, ())
    }
}

impl Seek for Out {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let r = if self.failed {
            Ok(0)
        } else {
            self.file.seek(pos)
        };
        self.guard(r, 0)
    }
}

/// Opens `path` for writing, truncated, created with [`EXPORT_FILE_MODE`] so the bytes are
/// never readable by others, not even between creation and a later chmod. A leftover from
/// before that rule (a crashed attempt of an older release) keeps its mode on truncation,
/// so a regular file with more permissions is narrowed before anything is written to it.
/// (A device, such as a test's `/dev/full`, is left as it is.)
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(EXPORT_FILE_MODE)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o777 != EXPORT_FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(EXPORT_FILE_MODE))?;
    }
    Ok(file)
}

/// What the finished file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// A ZIP being written to `path`.
pub(crate) struct ZipSink {
    tx: Option<mpsc::Sender<Piece>>,
    task: Option<JoinHandle<io::Result<Finished>>>,
}

impl ZipSink {
    /// Creates (or truncates) `path` with mode 0600 and starts the writer thread. Entries carry `modified`.
    pub(crate) fn create(path: PathBuf, modified: zip::DateTime) -> Self {
        let (tx, mut rx) = mpsc::channel::<Piece>(IN_FLIGHT);
        let task = tokio::task::spawn_blocking(move || -> io::Result<Finished> {
            let file = create_private(&path)?;
            let mut zip = ZipWriter::new(Out {
                file: BufWriter::with_capacity(1 << 16, file),
                failed: false,
            });
            let options = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .last_modified_time(modified)
                .unix_permissions(0o600);
            while let Some(piece) = rx.blocking_recv() {
                match piece {
                    Piece::File(name) => zip.start_file(name, options).map_err(io::Error::other)?,
                    Piece::Data(bytes) => zip.write_all(&bytes)?,
                }
            }
            let mut out = zip.finish().map_err(io::Error::other)?;
            out.flush()?;
            if out.failed {
                return Err(io::Error::other("an earlier write failed"));
            }
            let file = out.file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            // The checksum is read back from disk: it is what a download will serve.
            let mut file = std::fs::File::open(&path)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut size = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                hasher.update(&buf[..n]);
            }
            Ok(Finished {
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        });
        Self {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Starts entry `name`; later [`ZipSink::write`]s go into it.
    pub(crate) async fn start_file(&mut self, name: &'static str) -> io::Result<()> {
        self.push(Piece::File(name)).await
    }

    /// Appends `bytes` to the current entry.
    pub(crate) async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.push(Piece::Data(bytes)).await
    }

    async fn push(&mut self, piece: Piece) -> io::Result<()> {
        if let Some(tx) = &self.tx
            && tx.send(piece).await.is_ok()
        {
            return Ok(());
        }
        // The writer stopped early: its result says why.
        self.tx = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the ZIP writer stopped early")),
        }
    }

    async fn join(&mut self) -> io::Result<Finished> {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("ZIP writer thread: {e}")))),
            None => Err(io::Error::other("the ZIP writer already stopped")),
        }
    }

    /// Stops the writer and waits for its thread, so that the caller can remove the file
    /// knowing nothing writes to it any more.
    pub(crate) async fn abandon(mut self) {
        self.tx = None;
        let _ = self.join().await;
    }

    /// Writes the central directory, syncs the file and returns its size and checksum.
    pub(crate) async fn finish(mut self) -> io::Result<Finished> {
        self.tx = None;
        self.join().await
    }
}
