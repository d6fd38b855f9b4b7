//! Paths under `MEDIA_ROOT`, as given by clients and stored in rows: always relative, never
//! leading outside the root, whether by `..`, by an absolute path or through a symbolic
//! link.
//!
//! [`resolve_media_path`] is what both the jobs (reading a source, writing thumbnails) and
//! the HTTP routes (answering 400 for a path that escapes, 404 for one that is missing) use.
//! [`locate_for_removal`] is what the erasure uses before deleting anything: the directories
//! on the way are resolved (a link leading out is refused), the last component is not
//! followed (a link is removed as a link, never its target).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a relative media path was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("the path is empty; give a file path relative to MEDIA_ROOT")]
    Empty,
    /// The path is absolute (`/etc/passwd`).
    #[error("{0:?} is an absolute path; give it relative to MEDIA_ROOT")]
    Absolute(String),
    /// The path goes up with `..`, or carries a NUL byte.
    #[error("{0:?} contains `..` or a NUL byte; give a plain path relative to MEDIA_ROOT")]
    NotPlain(String),
    /// The path exists, but a symbolic link on the way leads outside `MEDIA_ROOT`.
    #[error("{0:?} leads outside MEDIA_ROOT through a symbolic link")]
    EscapesRoot(String),
    /// Nothing exists at the path (or a symbolic link on the way is dangling).
    #[error("{0:?} does not exist under MEDIA_ROOT")]
    NotFound(String),
    /// `MEDIA_ROOT` itself cannot be resolved (missing, unreadable): an operator problem.
    #[error("MEDIA_ROOT {root} cannot be resolved: {source}")]
    Root {
        /// The configured root.
        root: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file system failed while resolving the path (permissions, I/O).
    #[error("cannot resolve {path:?} under MEDIA_ROOT: {source}")]
    Io {
        /// The relative path.
        path: String,
        /// Why.
        source: io::Error,
    },
}

impl PathError {
    /// True when the path itself is refused (empty, absolute, `..`, a link out of the root):
    /// the caller's mistake, answered with 400 and never worth retrying.
    pub fn is_refused(&self) -> bool {
        match self {
            Self::Empty | Self::Absolute(_) | Self::NotPlain(_) | Self::EscapesRoot(_) => true,
            Self::NotFound(_) | Self::Root { .. } | Self::Io { .. } => false,
        }
    }

    /// True when the path is acceptable but nothing is there (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// Checks the path's text alone: non-empty, relative, no `..`, no NUL. Cheap and without
/// file-system access, so a route can refuse a bad path before anything else.
pub fn check_relative(relative: &str) -> Result<&Path, PathError> {
    if relative.is_empty() {
        return Err(PathError::Empty);
    }
    if relative.contains('\0') {
        return Err(PathError::NotPlain(relative.to_owned()));
    }
    let path = Path::new(relative);
    let mut normal = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::NotPlain(relative.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(relative.to_owned()));
            }
        }
    }
    if normal == 0 {
        return Err(PathError::Empty);
    }
    Ok(path)
}

/// The canonical path of `relative` under `root`: every symbolic link resolved, and
/// refused unless it stays inside `root` (itself canonicalised, so `root` may be relative
/// or a link). The path must exist.
///
/// ```
/// # use jobs::media_path::{resolve_media_path, PathError};
/// let root = tempfile::tempdir().unwrap();
/// std::fs::write(root.path().join("cover.png"), b"x").unwrap();
/// assert!(resolve_media_path(root.path(), "cover.png").is_ok());
/// assert!(resolve_media_path(root.path(), "../etc/passwd").unwrap_err().is_refused());
/// assert!(resolve_media_path(root.path(), "/etc/passwd").unwrap_err().is_refused());
/// assert!(resolve_media_path(root.path(), "gone.png").unwrap_err().is_not_found());
/// ```
pub fn resolve_media_path(root: &Path, relative: &str) -> Result<PathBuf, PathError> {
    let path = check_relative(relative)?;
    let root = canonical_root(root)?;
    let resolved = match root.join(path).canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PathError::NotFound(relative.to_owned()));
        }
        Err(source) => {
            return Err(PathError::Io {
                path: relative.to_owned(),
                source,
            });
        }
    };
    if !resolved.starts_with(&root) {
        return Err(PathError::EscapesRoot(relative.to_owned()));
    }
    Ok(resolved)
}

/// `relative` in canonical form: [`resolve_media_path`]'s result, relative to the canonical
/// root (`./covers//a.png` and a link inside the root to `covers/a.png` both give
/// `covers/a.png`). What is stored and compared, so that two spellings of one file are one.
pub fn canonical_relative(root: &Path, relative: &str) -> Result<String, PathError> {
    let resolved = resolve_media_path(root, relative)?;
    let root = canonical_root(root)?;
    let inside = resolved
        .strip_prefix(&root)
        .map_err(|_| PathError::EscapesRoot(relative.to_owned()))?;
    if inside.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(inside.to_string_lossy().into_owned())
}

/// The canonical path of directory `relative` under `root`, creating the missing levels one
/// at a time; each existing level is resolved first, so a symbolic link leading out of the
/// root is refused before anything is created through it.
pub fn ensure_media_dir(root: &Path, relative: &str) -> Result<PathBuf, PathError> {
    let path = check_relative(relative)?;
    let mut dir = canonical_root(root)?;
    let mut prefix = PathBuf::new();
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        prefix.push(name);
        let text = prefix.to_string_lossy().into_owned();
        dir = match resolve_media_path(root, &text) {
            Ok(existing) => existing,
            Err(PathError::NotFound(_)) => {
                let created = dir.join(name);
                match std::fs::create_dir(&created) {
                    Ok(()) => {}
                    // Created concurrently: resolve it as if it had been there.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(PathError::Io { path: text, source }),
                }
                resolve_media_path(root, &text)?
            }
            Err(e) => return Err(e),
        };
        if !dir.is_dir() {
            return Err(PathError::Io {
                path: text,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
    }
    Ok(dir)
}

/// What lies at a path the erasure is about to delete, found by [`locate_for_removal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removable {
    /// Nothing is there (nor, possibly, its directory).
    Missing,
    /// A file (anything but a directory or a symbolic link), at this canonical path inside
    /// the root.
    File(PathBuf),
    /// A symbolic link inside the root: remove the link only. Its target is not looked at:
    /// it may lie outside the root, or be a file of someone else's.
    Link(PathBuf),
    /// A directory, at this canonical path inside the root.
    Dir(PathBuf),
}

/// Where `relative` under `root` is, for deleting it: its directory is resolved with every
/// symbolic link followed and refused ([`PathError::EscapesRoot`]) unless it stays inside
/// `root`; its last component is looked at without following it. So deleting what this
/// returns never touches anything outside `root`.
///
/// ```
/// # use std::os::unix::fs::symlink;
/// # use jobs::media_path::{locate_for_removal, Removable};
/// let root = tempfile::tempdir().unwrap();
/// let outside = tempfile::tempdir().unwrap();
/// std::fs::write(outside.path().join("theirs.png"), b"x").unwrap();
/// symlink(outside.path().join("theirs.png"), root.path().join("cover.png")).unwrap();
/// symlink(outside.path(), root.path().join("covers")).unwrap();
/// assert!(matches!(locate_for_removal(root.path(), "cover.png"), Ok(Removable::Link(_))));
/// assert!(locate_for_removal(root.path(), "covers/theirs.png").unwrap_err().is_refused());
/// assert_eq!(locate_for_removal(root.path(), "gone/x.png").unwrap(), Removable::Missing);
/// ```
pub fn locate_for_removal(root: &Path, relative: &str) -> Result<Removable, PathError> {
    let path = check_relative(relative)?;
    let mut names: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            Component::CurDir
            | Component::ParentDir
            | Component::RootDir
            | Component::Prefix(_) => None,
        })
        .collect();
    let name = names
        .pop()
        .expect("check_relative leaves at least one name");
    let parent = if names.is_empty() {
        canonical_root(root)?
    } else {
        let parent: PathBuf = names.iter().collect();
        match resolve_media_path(root, &parent.to_string_lossy()) {
            Ok(p) => p,
            Err(PathError::NotFound(_)) => return Ok(Removable::Missing),
            Err(PathError::EscapesRoot(_)) => {
                return Err(PathError::EscapesRoot(relative.to_owned()));
            }
            Err(e) => return Err(e),
        }
    };
    let at = parent.join(name);
    match std::fs::symlink_metadata(&at) {
        Ok(meta) if meta.file_type().is_symlink() => Ok(Removable::Link(at)),
        Ok(meta) if meta.is_dir() => Ok(Removable::Dir(at)),
        Ok(_) => Ok(Removable::File(at)),
        // The "directory" is a file: nothing can be below it.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(Removable::Missing)
        }
        Err(source) => Err(PathError::Io {
            path: relative.to_owned(),
            source,
        }),
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf, PathError> {
    root.canonicalize().map_err(|source| PathError::Root {
        root: root.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn media() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("covers")).unwrap();
        std::fs::write(root.path().join("covers/a.png"), b"png").unwrap();
        std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
        (root, outside)
    }

    #[test]
    fn plain_relative_paths_resolve_inside_the_root() {
        let (root, _outside) = media();
        let p = resolve_media_path(root.path(), "covers/a.png").unwrap();
        assert_eq!(p, root.path().canonicalize().unwrap().join("covers/a.png"));
        let p = resolve_media_path(root.path(), "./covers/./a.png").unwrap();
        assert!(p.ends_with("covers/a.png"));
    }

    #[test]
    fn parent_dirs_absolute_and_empty_paths_are_refused_without_touching_the_disk() {
        let missing_root = Path::new("/nonexistent/veza/media");
        for bad in [
            "../secret.txt",
            "covers/../../secret.txt",
            "covers/..",
            "..",
        ] {
            let e = resolve_media_path(missing_root, bad).unwrap_err();
            assert!(matches!(e, PathError::NotPlain(_)), "{bad}: {e}");
            assert!(e.is_refused());
        }
        for bad in ["/etc/passwd", "//etc/passwd"] {
            let e = resolve_media_path(missing_root, bad).unwrap_err();
            assert!(matches!(e, PathError::Absolute(_)), "{bad}: {e}");
        }
        for bad in ["", ".", "./"] {
            assert!(matches!(
                resolve_media_path(missing_root, bad).unwrap_err(),
                PathError::Empty
            ));
        }
        assert!(
            resolve_media_path(missing_root, "a\0b")
                .unwrap_err()
                .is_refused()
        );
    }

    /// [`media`] with three links: `out` (a directory outside), `covers/evil.png` (a file
    /// outside) and `alias.png` (a file inside).
    fn media_with_links() -> (tempfile::TempDir, tempfile::TempDir) {
        let (root, outside) = media();
        symlink(outside.path(), root.path().join("out")).unwrap();
        symlink(
            outside.path().join("secret.txt"),
            root.path().join("covers/evil.png"),
        )
        .unwrap();
        symlink(
            root.path().join("covers/a.png"),
            root.path().join("alias.png"),
        )
        .unwrap();
        (root, outside)
    }

    #[test]
    fn symlinks_leading_out_are_refused_and_links_inside_are_followed() {
        let (root, _outside) = media_with_links();
        for bad in ["out/secret.txt", "covers/evil.png", "out"] {
            let e = resolve_media_path(root.path(), bad).unwrap_err();
            assert!(matches!(e, PathError::EscapesRoot(_)), "{bad}: {e}");
            assert!(e.is_refused());
        }
        let alias = resolve_media_path(root.path(), "alias.png").unwrap();
        assert!(alias.ends_with("covers/a.png"));
        for spelling in ["covers/a.png", "./covers//a.png", "alias.png"] {
            assert_eq!(
                canonical_relative(root.path(), spelling).unwrap(),
                "covers/a.png"
            );
        }
    }

    #[test]
    fn missing_files_and_dangling_links_are_not_found() {
        let (root, _outside) = media();
        symlink("/nonexistent/target", root.path().join("dangling.png")).unwrap();
        for p in ["covers/b.png", "nope/b.png", "dangling.png"] {
            let e = resolve_media_path(root.path(), p).unwrap_err();
            assert!(e.is_not_found(), "{p}: {e}");
            assert!(!e.is_refused());
        }
        let e = resolve_media_path(Path::new("/nonexistent/veza/media"), "a.png").unwrap_err();
        assert!(matches!(e, PathError::Root { .. }), "{e}");
    }

    #[test]
    fn removal_never_follows_a_link_out_and_never_the_last_link() {
        let (root, _outside) = media_with_links();
        let canonical = root.path().canonicalize().unwrap();
        let e = locate_for_removal(root.path(), "out/secret.txt").unwrap_err();
        assert!(matches!(e, PathError::EscapesRoot(_)), "{e}");
        assert_eq!(
            locate_for_removal(root.path(), "covers/evil.png").unwrap(),
            Removable::Link(canonical.join("covers/evil.png"))
        );
        assert_eq!(
            locate_for_removal(root.path(), "alias.png").unwrap(),
            Removable::Link(canonical.join("alias.png")),
            "a link inside the root is removed as a link too"
        );
        assert_eq!(
            locate_for_removal(root.path(), "./covers/a.png").unwrap(),
            Removable::File(canonical.join("covers/a.png"))
        );
        assert_eq!(
            locate_for_removal(root.path(), "covers").unwrap(),
            Removable::Dir(canonical.join("covers"))
        );
        for missing in ["covers/b.png", "nope/b.png", "covers/a.png/b"] {
            assert_eq!(
                locate_for_removal(root.path(), missing).unwrap(),
                Removable::Missing,
                "{missing}"
            );
        }
        assert!(
            locate_for_removal(root.path(), "../x")
                .unwrap_err()
                .is_refused()
        );
    }

    #[test]
    fn media_dirs_are_created_level_by_level_but_never_through_a_link_out() {
        let (root, outside) = media();
        let dir = ensure_media_dir(root.path(), "thumbnails/42").unwrap();
        assert!(dir.is_dir());
        assert_eq!(ensure_media_dir(root.path(), "thumbnails/42").unwrap(), dir);
        symlink(outside.path(), root.path().join("thumbnails/43")).unwrap();
        let e = ensure_media_dir(root.path(), "thumbnails/43/sub").unwrap_err();
        assert!(matches!(e, PathError::EscapesRoot(_)), "{e}");
        assert!(
            !outside.path().join("sub").exists(),
            "nothing created outside"
        );
        std::fs::write(root.path().join("thumbnails/file"), b"").unwrap();
        assert!(ensure_media_dir(root.path(), "thumbnails/file").is_err());
    }
}
