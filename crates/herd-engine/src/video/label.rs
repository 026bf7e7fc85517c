//! The text before each frame in the prompt — kept here, in one place.
//!
//! The form: `Frame at M:SS:` (`H:MM:SS` from an hour on), with tenths of a second when the
//! frame is not on a whole second (`Frame at 0:02.5:`), then the frame's image layout. Frames
//! follow each other with nothing else between them.

/// `Frame at 0:05:` for a frame at `seconds`.
pub fn frame_label(seconds: f64) -> String {
    format!("Frame at {}:", timestamp(seconds))
}

/// `0:05`, `1:02:03`, `0:02.5` (tenths, rounded; negative and non-finite times are 0).
pub fn timestamp(seconds: f64) -> String {
    let tenths = if seconds.is_finite() && seconds > 0.0 {
        (seconds * 10.0).round() as u64
    } else {
        0
    };
    let (whole, tenth) = (tenths / 10, tenths % 10);
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    let mut out = if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    };
    if tenth != 0 {
        out.push_str(&format!(".{tenth}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(frame_label(5.0), "Frame at 0:05:");
        assert_eq!(frame_label(0.0), "Frame at 0:00:");
        assert_eq!(frame_label(2.5), "Frame at 0:02.5:");
        assert_eq!(frame_label(2.96), "Frame at 0:03:");
        assert_eq!(frame_label(65.0), "Frame at 1:05:");
        assert_eq!(frame_label(3723.4), "Frame at 1:02:03.4:");
        assert_eq!(frame_label(-1.0), "Frame at 0:00:");
        assert_eq!(frame_label(f64::NAN), "Frame at 0:00:");
    }
}
