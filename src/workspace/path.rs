//! Validation and normalisation of client-supplied workspace paths. A path that passes here is
//! relative, has only plain components and can be resolved beneath the workspace; whether it
//! crosses a symlink is decided later, at resolution time, against the real directory tree.

use crate::error::{Error, Reason, Result};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Name prefix of in-flight upload temp files. Reserved so a client can never address (or collide
/// with) a temp file, and so listings can hide them.
pub const TEMP_PREFIX: &str = ".agentd-upload-";

/// Normalises a client path that names a file or directory inside the workspace (not the root):
/// `a//b/./c` → `a/b/c`. Refused with `InvalidPath` on `field`: empty, absolute, `..`, NUL,
/// over-long components or paths, and the reserved temp-file prefix.
pub fn normalize_path(path: &str, field: &str) -> Result<String> {
    let normalized = normalize_inner(path, field)?;
    if normalized.is_empty() {
        return Err(bad(
            field,
            format!("{field} {path:?} is empty; it must name an entry inside the workspace"),
        ));
    }
    Ok(normalized)
}

/// Like [`normalize_path`] but for places where a directory is meant: the workspace root itself
/// (`""` or `"."`) is accepted and returned as `""`.
pub fn normalize_dir(path: &str, field: &str) -> Result<String> {
    normalize_inner(path, field)
}

fn normalize_inner(path: &str, field: &str) -> Result<String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(
            field,
            format!(
                "{field} is {} bytes long; at most {MAX_PATH_BYTES} are allowed",
                path.len()
            ),
        ));
    }
    if path.contains('\0') {
        return Err(bad(field, format!("{field} {path:?} contains a NUL byte")));
    }
    if path.starts_with('/') {
        return Err(bad(
            field,
            format!("{field} {path:?} is absolute; paths are relative to the workspace"),
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => continue,
            ".." => {
                return Err(bad(
                    field,
                    format!("{field} {path:?} contains a \"..\" component"),
                ));
            }
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(bad(
                    field,
                    format!(
                        "{field} {path:?} has a component of {} bytes; at most \
                         {MAX_COMPONENT_BYTES} are allowed",
                        c.len()
                    ),
                ));
            }
            c if c.starts_with(TEMP_PREFIX) => {
                return Err(bad(
                    field,
                    format!("{field} {path:?} uses the reserved name prefix {TEMP_PREFIX:?}"),
                ));
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn bad(field: &str, message: String) -> Error {
    Error::invalid(Reason::InvalidPath, field, message)
}

/// Splits a normalised, non-empty path into its parent directory (`""` for the root) and name.
pub(crate) fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel),
    }
}

/// Whether a symlink stored at `link_rel` (a normalised path) with this target would, read
/// lexically, stay inside the workspace. Only used to choose an error reason: links are never
/// followed either way.
pub(crate) fn link_stays_inside(link_rel: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let (parent, _) = split_parent(link_rel);
    let mut stack: Vec<&str> = parent.split('/').filter(|c| !c.is_empty()).collect();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            c => stack.push(c),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn accepted_paths_are_normalised() {
        let table = [
            ("a", "a"),
            ("a/b/c", "a/b/c"),
            ("a//b/./c", "a/b/c"),
            ("./a/", "a"),
            ("a/./././b//", "a/b"),
            ("back\\slash", "back\\slash"),
            ("..a/b..", "..a/b.."),
            ("...", "..."),
            (".hidden", ".hidden"),
            ("sp ace/ünï", "sp ace/ünï"),
        ];
        for (input, want) in table {
            assert_eq!(
                normalize_path(input, "path").unwrap(),
                want,
                "input {input:?}"
            );
        }
        let max_component = "x".repeat(255);
        assert_eq!(normalize_path(&max_component, "p").unwrap(), max_component);
    }

    #[test]
    fn refused_paths_name_the_field() {
        let long_component = "x".repeat(256);
        let long_path = "a/".repeat(2049);
        let table: [&str; 12] = [
            "",
            ".",
            "./",
            "/etc/passwd",
            "/",
            "..",
            "a/../b",
            "a/..",
            "a\0b",
            &long_component,
            &long_path,
            "dir/.agentd-upload-123",
        ];
        for input in table {
            let err = normalize_path(input, "files[3].path").unwrap_err();
            match &err {
                Error::InvalidArgument { reason, field, .. } => {
                    assert_eq!(*reason, Reason::InvalidPath, "input {input:?}");
                    assert_eq!(field, "files[3].path");
                }
                other => panic!("unexpected error {other:?} for {input:?}"),
            }
        }
    }

    #[test]
    fn the_root_is_only_a_directory() {
        assert_eq!(normalize_dir("", "dir").unwrap(), "");
        assert_eq!(normalize_dir(".", "dir").unwrap(), "");
        assert_eq!(normalize_dir("./a/", "dir").unwrap(), "a");
        assert!(normalize_dir("/", "dir").is_err());
        assert!(normalize_dir("..", "dir").is_err());
    }

    #[test]
    fn link_targets_are_classified_lexically() {
        assert!(link_stays_inside("a/link", "b"));
        assert!(link_stays_inside("a/link", "../b"));
        assert!(!link_stays_inside("a/link", "../../b"));
        assert!(!link_stays_inside("link", "/etc/passwd"));
        assert!(!link_stays_inside("link", ".."));
        assert!(link_stays_inside("link", "./x/../y"));
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_inside(parts in proptest::collection::vec(
            prop_oneof![
                Just("..".to_string()), Just(".".to_string()), Just(String::new()),
                Just("/".to_string()), "[a-z.\\\\/]{1,6}", "\\PC{0,8}",
            ], 0..8))
        {
            let input = parts.join("/");
            if let Ok(p) = normalize_path(&input, "path") {
                prop_assert!(!p.is_empty());
                prop_assert!(!p.starts_with('/'));
                let root = Path::new("/ws/root");
                let joined = root.join(&p);
                prop_assert!(joined.starts_with(root));
                for c in Path::new(&p).components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "component {c:?} in {p:?}");
                }
                // Normalising is idempotent.
                prop_assert_eq!(normalize_path(&p, "path").unwrap(), p);
            }
        }
    }
}
