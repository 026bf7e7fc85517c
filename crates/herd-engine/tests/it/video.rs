//! Video: frame choice and content on clips of known content (fixtures/video, made by
//! tools/reference/make_video_clips.sh), the token budget, and a video's frames entering the
//! model exactly as the same pictures given as images.

use candle_core::{DType, Device};
use herd_engine::frontend::images::{load_image, ImageEncoder};
use herd_engine::image::RgbImage;
use herd_engine::video::{self, Selection, VideoOptions};
use herd_testkit::fixture_path;

fn clip(name: &str) -> std::path::PathBuf {
    fixture_path("video").join(name)
}

/// The clip's colour at a picture's centre: r, g, b, w (white) or k (black).
fn colour(img: &RgbImage) -> char {
    let p = img.get_pixel(img.width() / 2, img.height() / 2);
    // ffmpeg's "green" is (0, 128, 0).
    match (p[0] > 100, p[1] > 100, p[2] > 100) {
        (true, true, true) => 'w',
        (true, false, false) => 'r',
        (false, true, false) => 'g',
        (false, false, true) => 'b',
        (false, false, false) => 'k',
        _ => '?',
    }
}

fn config() -> herd_engine::image::PreprocessConfig {
    herd_engine::image::PreprocessConfig {
        tile: 16,
        max_patches: 4,
        ..Default::default()
    }
}

fn load(path: &std::path::Path, selection: Selection) -> video::VideoFrames {
    let options = VideoOptions {
        selection,
        max_video_tokens: 100_000,
        folder_fps: 1.0,
    };
    video::load(path, &options, &config(), 4, &|label: &str| label.len()).unwrap()
}

fn summary(frames: &video::VideoFrames) -> (Vec<f64>, String) {
    (
        frames
            .frames
            .iter()
            .map(|(t, _)| (t * 100.0).round() / 100.0)
            .collect(),
        frames.frames.iter().map(|(_, img)| colour(img)).collect(),
    )
}

/// Every source with the four colour segments of 2.5 s each.
fn segment_clips() -> Vec<std::path::PathBuf> {
    let mut clips = vec![clip("segments.gif")];
    if cfg!(feature = "video") {
        clips.push(clip("segments.mp4"));
        clips.push(clip("segments.webm"));
    }
    clips
}

#[test]
fn evenly_spaced_fps_and_scene_frames_show_what_the_clip_shows_then() {
    for path in segment_clips() {
        let what = path.display().to_string();
        let even = load(&path, Selection::Count(4));
        assert!((even.duration - 10.0).abs() < 0.05, "{what}: {}", even.duration);
        assert_eq!(
            summary(&even),
            (vec![1.25, 3.75, 6.25, 8.75], "rgbw".to_string()),
            "{what}"
        );
        let fps = load(&path, Selection::Fps(0.5));
        assert_eq!(
            summary(&fps),
            (vec![0.0, 2.0, 4.0, 6.0, 8.0], "rrgbw".to_string()),
            "{what}"
        );
        let scenes = load(
            &path,
            Selection::Scenes {
                threshold: 0.1,
                max: 16,
            },
        );
        assert_eq!(
            summary(&scenes),
            (vec![0.0, 2.5, 5.0, 7.5], "rgbw".to_string()),
            "{what}"
        );
        let capped = load(
            &path,
            Selection::Scenes {
                threshold: 0.1,
                max: 2,
            },
        );
        assert_eq!(capped.frames.len(), 2, "{what}");
    }
}

#[test]
fn a_folder_of_frames_is_a_clip_at_its_frame_rate() {
    let frames = load(&clip("frames"), Selection::Count(4));
    assert_eq!(summary(&frames), (vec![0.5, 1.5, 2.5, 3.5], "rgbw".to_string()));
    for ((_, img), name) in frames
        .frames
        .iter()
        .zip(["0-red", "1-green", "2-blue", "3-white"])
    {
        let file = load_image(&clip("frames").join(format!("{name}.png"))).unwrap();
        assert_eq!(img.as_raw(), file.as_raw(), "{name}");
    }
}

#[cfg(feature = "video")]
#[test]
fn a_moving_square_is_where_it_should_be() {
    // x = 12 px a second: the square's left edge at 0, 12, 24, 36.
    let frames = load(&clip("square.mp4"), Selection::Fps(1.0));
    assert_eq!(frames.frames.len(), 4);
    for (t, img) in &frames.frames {
        let row = img.height() / 2 + 2;
        let left = (0..img.width())
            .find(|&x| img.get_pixel(x, row)[0] > 128)
            .unwrap();
        let expected = (12.0 * t) as i64;
        assert!(
            (i64::from(left) - expected).abs() <= 1,
            "at {t} s the square starts at {left}, not {expected}"
        );
    }
}

#[cfg(feature = "video")]
#[test]
fn a_ten_hour_clip_costs_seeks_not_a_full_decode() {
    let mut src = video::source::open(&clip("long.mp4"), 1.0).unwrap();
    assert!((src.duration() - 36_000.0).abs() < 1.0, "{}", src.duration());
    for t in Selection::Count(8).times(src.duration()) {
        src.frame_at(t).unwrap();
    }
    // 3,600 frames, a keyframe every 10: each seek decodes at most a keyframe interval.
    assert!(
        src.frames_decoded() <= 8 * 11,
        "{} frames decoded",
        src.frames_decoded()
    );
}

#[test]
fn bad_videos_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("herd-video-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.mp4");
    std::fs::write(&text, "these are not frames").unwrap();
    let err = |path: &std::path::Path| {
        let options = VideoOptions::default();
        match video::load(path, &options, &config(), 4, &|l: &str| l.len()) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        }
    };
    let e = err(&text);
    assert!(e.contains("notes.mp4"), "{e}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(err(&empty).contains("no frames"));
    assert!(err(&dir.join("missing.mp4")).contains("missing.mp4"));
    // A GIF cut short.
    let gif = std::fs::read(clip("segments.gif")).unwrap();
    let cut = dir.join("cut.gif");
    std::fs::write(&cut, &gif[..gif.len() / 3]).unwrap();
    assert!(err(&cut).contains("cut.gif"));
    if cfg!(feature = "video") {
        let mp4 = std::fs::read(clip("segments.mp4")).unwrap();
        let cut = dir.join("cut.mp4");
        std::fs::write(&cut, &mp4[..mp4.len() / 3]).unwrap();
        assert!(err(&cut).contains("cut.mp4"));
    }
    // Frames wider than herd takes.
    let e = err(&clip("wide.gif"));
    assert!(e.contains("wide.gif") && e.contains("16384 pixels a side"), "{e}");
    // Selections out of range.
    for selection in [
        Selection::Count(0),
        Selection::Fps(0.0),
        Selection::Scenes {
            threshold: -1.0,
            max: 3,
        },
    ] {
        let options = VideoOptions {
            selection,
            ..VideoOptions::default()
        };
        assert!(video::load(&clip("segments.gif"), &options, &config(), 4, &|l: &str| l.len()).is_err());
    }
}

#[test]
fn the_budget_takes_tiles_first_then_frames() {
    let options = |budget| VideoOptions {
        selection: Selection::Count(8),
        max_video_tokens: budget,
        folder_fps: 1.0,
    };
    let load = |budget| {
        video::load(
            &clip("segments.gif"),
            &options(budget),
            &config(),
            4,
            &|_: &str| 3,
        )
    };
    let roomy = load(100_000).unwrap();
    assert_eq!((roomy.frames.len(), roomy.max_tiles), (8, 4));
    // One tile a frame: 1 + 1 + 4 + 1 layout tokens and 3 for the label = 10.
    let tight = load(80).unwrap();
    assert_eq!((tight.frames.len(), tight.max_tiles, tight.tokens), (8, 1, 80));
    let thin = load(35).unwrap();
    assert_eq!((thin.frames.len(), thin.selected, thin.max_tiles), (3, 8, 1));
    assert!(thin.summary().contains("of 8 selected"), "{}", thin.summary());
    assert!(load(9).is_err());
}

#[test]
fn video_frames_enter_the_model_as_the_same_pictures_given_as_images() {
    let dir = fixture_path("vision-chat-tiny");
    let config = herd_model::ModelConfig::load(&dir).unwrap();
    let encoder = ImageEncoder::load(&dir, config.hidden_size, DType::F32, &Device::Cpu)
        .unwrap()
        .unwrap();
    let tokenizer = herd_text::Tokenizer::from_dir(&dir).unwrap();
    let options = VideoOptions {
        selection: Selection::Count(4),
        ..VideoOptions::default()
    };
    let frames = encoder
        .video_frames(&tokenizer, &clip("frames"), &options)
        .unwrap();
    assert_eq!(frames.max_tiles, encoder.preprocess_config().max_patches);
    let limits = vec![Some(frames.max_tiles); 4];
    let as_video = encoder
        .encode_limited(&frames.images(), &limits)
        .unwrap()
        .unwrap();
    let files: Vec<RgbImage> = ["0-red", "1-green", "2-blue", "3-white"]
        .iter()
        .map(|n| load_image(&clip("frames").join(format!("{n}.png"))).unwrap())
        .collect();
    let as_images = encoder.encode(&files).unwrap().unwrap();
    assert_eq!(as_video.grids, as_images.grids);
    herd_testkit::assert_close(
        &as_video.features.rows,
        &as_images.features.rows,
        0.0,
        "frames as images",
    );
    // The chat parts: a label, then the image, per frame.
    let parts = frames.message_parts();
    assert_eq!(parts.len(), 8);
    assert_eq!(parts[0]["text"], "Frame at 0:00.5:");
    assert_eq!(parts[1]["type"], "image");
    assert_eq!(parts[6]["text"], "Frame at 0:03.5:");
}
