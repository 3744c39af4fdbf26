//! The 10 scoliosis radiograph categories and their roll-ups (view, phase).

/// The categories of docs/contract.md, in their canonical order (confusion-matrix order).
pub const SCOLIOSIS_CLASSES: [&str; 10] = [
    "ap_preop",
    "ap_preop_brace",
    "ap_postop_fusion",
    "ap_postop_growing_rods",
    "ap_postop_tether",
    "lat_preop",
    "lat_preop_brace",
    "lat_postop_fusion",
    "lat_postop_growing_rods",
    "lat_postop_tether",
];

/// Classes with fewer training images than this are flagged (the source study saw weaker
/// results there).
pub const SMALL_CLASS_THRESHOLD: u64 = 100;

/// The view of a category name: `ap` or `lat`; `None` for names outside the scheme.
pub fn view_of(class: &str) -> Option<&'static str> {
    if class.starts_with("ap_") {
        Some("ap")
    } else if class.starts_with("lat_") {
        Some("lat")
    } else {
        None
    }
}

/// The phase of a category name: `preop` (with or without brace) or `postop`.
pub fn phase_of(class: &str) -> Option<&'static str> {
    if class.contains("_preop") {
        Some("preop")
    } else if class.contains("_postop") {
        Some("postop")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_has_a_view_and_a_phase() {
        for class in SCOLIOSIS_CLASSES {
            assert!(view_of(class).is_some(), "{class}");
            assert!(phase_of(class).is_some(), "{class}");
        }
        assert_eq!(view_of("lat_postop_tether"), Some("lat"));
        assert_eq!(phase_of("ap_preop_brace"), Some("preop"));
        assert_eq!(view_of("cat"), None);
    }
}
