//! Fuzzes workspace path normalisation: whatever a client sends, an accepted path is relative,
//! made only of plain components, within the length limits, and normalising it again is a no-op.
#![no_main]

use agentd::workspace::{
    MAX_COMPONENT_BYTES, MAX_PATH_BYTES, TEMP_PREFIX, normalize_dir, normalize_path,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Paths arrive as protobuf strings, so only UTF-8 reaches the normaliser.
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let as_file = normalize_path(path, "path");
    let as_dir = normalize_dir(path, "path");
    match (&as_file, &as_dir) {
        (Ok(f), Ok(d)) => assert_eq!(f, d, "file and dir normalisation disagree on {path:?}"),
        // Only the workspace root itself may be a valid directory but not a valid file path.
        (Err(_), Ok(d)) => assert!(d.is_empty(), "{path:?} refused as a file but not as {d:?}"),
        (Ok(f), Err(_)) => panic!("{path:?} accepted as file {f:?} but refused as a directory"),
        (Err(_), Err(_)) => {}
    }
    let Ok(norm) = as_dir else {
        return;
    };
    assert!(norm.len() <= path.len() && norm.len() <= MAX_PATH_BYTES);
    assert!(!norm.starts_with('/') && !norm.ends_with('/'), "{norm:?}");
    assert!(!norm.contains('\0'), "{norm:?}");
    if !norm.is_empty() {
        for c in norm.split('/') {
            assert!(
                !c.is_empty() && c != "." && c != "..",
                "component {c:?} in {norm:?}"
            );
            assert!(c.len() <= MAX_COMPONENT_BYTES, "{norm:?}");
            assert!(!c.starts_with(TEMP_PREFIX), "{norm:?}");
        }
    }
    // A `..` anywhere in the input must have been refused, never resolved away.
    assert!(!path.split('/').any(|c| c == ".."), "{path:?} accepted");
    assert_eq!(
        normalize_dir(&norm, "path").ok().as_deref(),
        Some(norm.as_str())
    );
    // The normalised path names the same place: joining under a root stays under it.
    let joined = std::path::Path::new("/ws").join(&norm);
    assert!(joined.starts_with("/ws"));
});
