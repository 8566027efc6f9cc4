//! [`RelPath`]: a path below a job's root, as raw bytes.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::PathError;

/// A path relative to a job root: `/`-separated components of raw bytes.
///
/// Unix file names are any bytes except `/` and NUL, so the path is kept as bytes and never
/// required to be UTF-8. Every value is normalised: no leading or trailing `/`, no empty
/// component (`a//b`), no `.` or `..` component, no NUL. A `RelPath` therefore never names
/// anything above the root by itself; what it can still do is pass *through a symlink* on the
/// target, which is the target jail's business ([`TargetRoot`](super::TargetRoot)).
///
/// The job root itself is the distinguished empty value [`RelPath::root`]; [`RelPath::new`]
/// refuses an empty path so that a bug producing one is caught instead of silently meaning
/// "the whole root". Deserialisation validates the same way (an empty string decodes to the
/// root): a peer cannot smuggle an unnormalised path past the type.
///
/// Ordering is by raw bytes of the whole path, which is *not* the scan order (that sorts each
/// directory's names and puts a directory before its contents).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The job root itself.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Validates `bytes` as a non-empty, normalised relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(PathError::Empty);
        }
        validate(&bytes)?;
        Ok(RelPath(bytes))
    }

    /// Converts a relative [`Path`] (as bytes; `./` prefixes and such are refused, not
    /// normalised, so that what is sent is exactly what was asked for).
    pub fn from_path(path: &Path) -> Result<Self, PathError> {
        Self::new(path.as_os_str().as_bytes())
    }

    /// The path's bytes (empty for the root).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as an [`OsStr`], for joining onto a local directory.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// Whether this is the job root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The components, outermost first (none for the root).
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        // `split` on an empty slice yields one empty item; the filter removes it for the root
        // and can remove nothing else, since components are never empty.
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The last component (none for the root).
    pub fn file_name(&self) -> Option<&[u8]> {
        self.components().next_back()
    }

    /// The containing directory (the root for a one-component path; none for the root).
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => RelPath(self.0[..i].to_vec()),
            None => RelPath::root(),
        })
    }

    /// This path with one more component.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if name.contains(&b'/') {
            // A name holding '/' would be several components: refuse it rather than split it.
            return Err(PathError::NotAName { name: lossy(name) });
        }
        validate_component(name, name)?;
        let mut bytes = self.0.clone();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        Ok(RelPath(bytes))
    }

    /// Whether `self` is `other` or lies below it (component-wise: `a/bc` is not below `a/b`).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.is_root()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }

    /// This path below a local directory.
    pub fn to_local(&self, base: &Path) -> PathBuf {
        if self.is_root() { base.to_path_buf() } else { base.join(self.as_os_str()) }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn validate(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.first() == Some(&b'/') {
        return Err(PathError::Absolute { path: lossy(bytes) });
    }
    for component in bytes.split(|&b| b == b'/') {
        validate_component(component, bytes)?;
    }
    Ok(())
}

fn validate_component(component: &[u8], whole: &[u8]) -> Result<(), PathError> {
    if component.contains(&0) {
        return Err(PathError::Nul { path: lossy(whole) });
    }
    if component.is_empty() {
        return Err(PathError::EmptyComponent { path: lossy(whole) });
    }
    if component == b"." || component == b".." {
        return Err(PathError::DotComponent { path: lossy(whole) });
    }
    Ok(())
}

impl fmt::Display for RelPath {
    /// Lossy: invalid UTF-8 shows as U+FFFD. The root shows as `.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

impl fmt::Debug for RelPath {
    /// Exact: non-printable and non-ASCII bytes are escaped (`\xff`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath(\"{}\")", self.0.escape_ascii())
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, PathError> {
        RelPath::new(s.as_bytes())
    }
}

impl TryFrom<&[u8]> for RelPath {
    type Error = PathError;
    fn try_from(b: &[u8]) -> Result<Self, PathError> {
        RelPath::new(b)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = crate::bytes_serde::deserialize(deserializer)?;
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        validate(&bytes).map_err(serde::de::Error::custom)?;
        Ok(RelPath(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths_including_non_utf8() {
        let p = RelPath::new(b"dir/sub/f\xffile".to_vec()).unwrap();
        assert_eq!(p.components().count(), 3);
        assert_eq!(p.file_name(), Some(&b"f\xffile"[..]));
        assert_eq!(p.parent().unwrap().as_bytes(), b"dir/sub");
        assert_eq!(RelPath::new("top").unwrap().parent(), Some(RelPath::root()));
        assert_eq!(RelPath::root().parent(), None);
        assert_eq!(p.to_string(), "dir/sub/f\u{fffd}ile");
        assert_eq!(format!("{p:?}"), "RelPath(\"dir/sub/f\\xffile\")");
    }

    #[test]
    fn refuses_unnormalised_paths() {
        for bad in
            [&b""[..], b"/etc/passwd", b"..", b"a/../b", b"a/./b", b".", b"a//b", b"a/", b"a\0b"]
        {
            assert!(RelPath::new(bad).is_err(), "{:?} accepted", bad.escape_ascii().to_string());
        }
        // Names that merely contain dots are fine.
        for good in [&b"..."[..], b".hidden", b"a..b", b"a/..b/c."] {
            assert!(RelPath::new(good).is_ok());
        }
    }

    #[test]
    fn join_and_starts_with_are_component_wise() {
        let a = RelPath::new("a/b").unwrap();
        let c = a.join(b"c").unwrap();
        assert_eq!(c.as_bytes(), b"a/b/c");
        assert_eq!(RelPath::root().join(b"x").unwrap().as_bytes(), b"x");
        assert!(a.join(b"..").is_err());
        assert!(a.join(b"x/y").is_err());
        assert!(a.join(b"").is_err());
        assert!(c.starts_with(&a));
        assert!(a.starts_with(&a));
        assert!(a.starts_with(&RelPath::root()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&a));
    }

    #[test]
    fn serde_validates() {
        let p = RelPath::new(b"x/\xfe".to_vec()).unwrap();
        let bytes = rmp_serde::to_vec_named(&p).unwrap();
        assert_eq!(rmp_serde::from_slice::<RelPath>(&bytes).unwrap(), p);
        let evil = rmp_serde::to_vec_named(&serde_bytes_wrapper(b"a/../../etc")).unwrap();
        assert!(rmp_serde::from_slice::<RelPath>(&evil).is_err());
        let root = rmp_serde::to_vec_named(&serde_bytes_wrapper(b"")).unwrap();
        assert!(rmp_serde::from_slice::<RelPath>(&root).unwrap().is_root());
    }

    struct Bin<'a>(&'a [u8]);
    impl Serialize for Bin<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    fn serde_bytes_wrapper(b: &[u8]) -> Bin<'_> {
        Bin(b)
    }
}
