//! Image preprocessing against transformers' `Llama4ImageProcessor`.

use std::path::PathBuf;

use candle_core::Device;
use herd_engine::image::{
    best_fit, canvases, decode, decode_within, load_data_url, load_file, preprocess, PixelBudget,
    PreprocessConfig,
};
use herd_testkit::{assert_close, fixture_path, fixtures_dir, Reference};

/// One grey level in normalised units: (1/255) / 0.5 (for the report line).
const ONE_GREY_LEVEL: f32 = 2.0 / 255.0;

fn image(name: &str) -> PathBuf {
    fixtures_dir().join("images").join(name)
}

#[test]
fn vision_tiny_settings_reproduce_reference_tiles() {
    let dir = fixture_path("vision-tiny");
    let config = PreprocessConfig::load(&dir).unwrap();
    assert_eq!((config.tile, config.max_patches), (56, 4));
    let reference = Reference::load("vision-tiny");
    for (k, file) in ["dog.jpg", "wide.png"].iter().enumerate().rev() {
        let img = load_file(&image(file)).unwrap();
        let processed = preprocess(&img, &config, &Device::Cpu).unwrap();
        let expected_ratio = reference.ids(&format!("img.{k}.aspect_ratio"));
        assert_eq!(
            vec![processed.aspect_ratio.0, processed.aspect_ratio.1],
            expected_ratio,
            "{file}"
        );
        let expected = reference.tensor(&format!("img.{k}.pixel_values"));
        let diff = (&processed.pixel_values - &expected).unwrap().abs().unwrap();
        let v: Vec<f32> = diff.flatten_all().unwrap().to_vec1().unwrap();
        let differ = v.iter().filter(|&&x| x != 0.0).count();
        // Bit-exact: the resize is the reference's fixed point, the normalisation its bf16.
        assert_eq!(differ, 0, "{file}: {differ} of {} values differ", v.len());
        assert_close(&processed.pixel_values, &expected, 0.0, file);
    }
}

#[test]
fn canvas_choice_follows_the_reference_rules() {
    let c = canvases(16, 336);
    assert_eq!(c.len(), 50);
    // LLAMA4.md §6: 1280² → 1344² (4×4, no resize), 512² → 672² (2×2).
    assert_eq!(best_fit(1280, 1280, &c, false), (1344, 1344));
    assert_eq!(best_fit(512, 512, &c, false), (672, 672));
    // Too big for any canvas: the mildest downscale.
    assert_eq!(best_fit(10_000, 300, &c, false), (5376, 336));
    assert_eq!(best_fit(40, 30, &c, false), (336, 336));
}

/// Images decoded against one budget spend it by their pixels, and one past what is left is
/// refused by name; the budget is left as it was.
#[test]
fn images_spend_a_shared_budget_of_pixels() {
    let png = std::fs::read(image("tiny.png")).unwrap(); // 40×30
    let mut budget = PixelBudget::new(2 * 1200 + 100);
    for left in [1300, 100] {
        assert_eq!(
            decode_within(&png, "tiny", &mut budget).unwrap().dimensions(),
            (40, 30)
        );
        assert_eq!(budget.left(), left);
    }
    let e = decode_within(&png, "third", &mut budget).unwrap_err().to_string();
    assert!(e.contains("third") && e.contains("request-pixels"), "{e}");
    assert_eq!(budget.left(), 100);
    assert_eq!(
        PixelBudget::for_request().left(),
        herd_limits::Limits::current().request_pixels
    );
}

#[test]
fn bad_images_are_clear_errors() {
    assert!(decode(b"not an image at all", "junk").is_err());
    let png = std::fs::read(image("tiny.png")).unwrap();
    assert!(decode(&png[..png.len() / 2], "truncated").is_err());
    assert!(load_file(&image("missing.png")).is_err());
    assert!(load_data_url("data:image/png;base64,!!!").is_err());
    assert!(load_data_url("http://example.com/a.png").is_err());
    // A data URL of a real image decodes.
    use base64::Engine;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    assert_eq!(
        load_data_url(&url).unwrap().dimensions(),
        load_file(&image("tiny.png")).unwrap().dimensions()
    );
    // A decompression bomb: a PNG header claiming 100000 × 100000 pixels.
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    assert!(decode(&bomb, "bomb").is_err());
}

/// Real settings (336-px tiles, up to 16): tile grid exact and pixels within the stated bound
/// for every test image, including grey, palette, alpha, tiny and odd-sized ones.
#[test]
fn real_settings_match_reference_for_every_test_image() {
    use candle_core::{DType, Tensor};
    let reference = Reference::load("images");
    let lut = reference.tensor("pixel_lut");
    let config = PreprocessConfig::default();
    let mut checked = 0;
    for (name, file) in [
        ("pasta", "pasta.jpeg"),
        ("dog", "dog.jpg"),
        ("wide", "wide.png"),
        ("tall", "tall.png"),
        ("tiny", "tiny.png"),
        ("grey", "grey.png"),
        ("alpha", "alpha.png"),
        ("palette", "palette.png"),
        ("square316", "square316.png"),
    ] {
        let processed = preprocess(&load_file(&image(file)).unwrap(), &config, &Device::Cpu).unwrap();
        let ratio = reference.ids(&format!("{name}.aspect_ratio"));
        assert_eq!(
            vec![processed.aspect_ratio.0, processed.aspect_ratio.1],
            ratio,
            "{file}"
        );
        let got = processed.pixel_values.clone();
        let (got, levels) = match reference.try_tensor(&format!("{name}.pixels")) {
            Some(levels) => (got, levels),
            None => {
                // Large JPEGs are stored every third row and column.
                let levels = reference.tensor(&format!("{name}.pixels_stride3"));
                let idx = Tensor::arange_step(0u32, 336, 3, &Device::Cpu).unwrap();
                (
                    got.index_select(&idx, 2).unwrap().index_select(&idx, 3).unwrap(),
                    levels,
                )
            }
        };
        assert_eq!(got.dims(), levels.dims(), "{file}");
        let flat = levels.flatten_all().unwrap().to_dtype(DType::U32).unwrap();
        let expected = lut
            .index_select(&flat, 0)
            .unwrap()
            .reshape(levels.dims())
            .unwrap();
        let diff: Vec<f32> = (&got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let differ = diff.iter().filter(|&&x| x != 0.0).count();
        let d = diff.iter().copied().fold(0f32, f32::max);
        println!(
            "{file}: {:?} tiles {}, {differ} of {} values differ (max {:.2} grey levels)",
            processed.aspect_ratio,
            processed.n_tiles(),
            diff.len(),
            d / ONE_GREY_LEVEL
        );
        assert_eq!(differ, 0, "{file}: preprocessing is not bit-exact");
        assert_close(&got, &expected, 0.0, file);
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 60×40 with a green block at its top-left and EXIF orientation 6 (display rotated
    // 90° clockwise): shown 40×60 with the block at the top-right (as PIL's exif_transpose).
    let img = load_file(&image("exif_rotate90.jpg")).unwrap();
    assert_eq!(img.dimensions(), (40, 60));
    assert!(img.get_pixel(35, 5)[1] > 150, "{:?}", img.get_pixel(35, 5));
    assert!(img.get_pixel(5, 5)[0] > 150, "{:?}", img.get_pixel(5, 5));
}

#[test]
fn cmyk_jpegs_decode_to_pils_rgb() {
    // CMYK JPEGs, with and without an Adobe marker: once a crash with an empty stderr.
    for name in ["cmyk", "cmyk-noadobe"] {
        cmyk_matches_pil(name);
    }
}

fn cmyk_matches_pil(name: &str) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image(&format!("{name}.rgb.json"))).unwrap()).unwrap();
    let img = load_file(&image(&format!("{name}.jpg"))).unwrap();
    assert_eq!(
        (u64::from(img.width()), u64::from(img.height())),
        (
            expected["width"].as_u64().unwrap(),
            expected["height"].as_u64().unwrap()
        )
    );
    let want: Vec<u8> = expected["rgb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(
        img.into_raw(),
        want,
        "{name}: PIL's Image.open(...).convert('RGB')"
    );
}

#[test]
fn corrupt_jpegs_are_errors_not_crashes() {
    let bytes = std::fs::read(image("cmyk.jpg")).unwrap();
    for cut in [20, bytes.len() / 2, bytes.len() - 2] {
        let mut broken = bytes[..cut].to_vec();
        broken.extend_from_slice(&[0xff, 0xd9]);
        let _ = decode(&broken, "cut"); // an image or an error, never a panic
    }
    let mut flipped = bytes.clone();
    for b in flipped.iter_mut().skip(200).step_by(7) {
        *b ^= 0x5a;
    }
    let _ = decode(&flipped, "flipped");
}

#[test]
fn preprocessor_configs_with_absurd_sizes_are_errors() {
    let dir = std::env::temp_dir().join(format!("herd-preproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    for (config, needle) in [
        (r#"{"max_patches": 4294967295}"#, "max_patches"),
        (r#"{"size": {"height": 0, "width": 0}}"#, "size"),
        (r#"{"size": {"height": 4294967296, "width": 4294967296}}"#, "size"),
    ] {
        std::fs::write(dir.join("preprocessor_config.json"), config).unwrap();
        let err = PreprocessConfig::load(&dir).unwrap_err().to_string();
        assert!(err.contains(needle), "{config}: {err}");
    }
    std::fs::remove_file(dir.join("preprocessor_config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("preprocessor_config.json")).unwrap();
    let err = PreprocessConfig::load(&dir).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The resize against torchvision's uint8 antialiased bilinear (fixtures/resize, made by
/// tools/reference/make_resize_cases.py): equal on every value, up and down, odd sizes.
#[test]
fn resize_is_bit_exact_with_the_reference() {
    use candle_core::safetensors::load;
    let cases = load(
        fixtures_dir().join("resize").join("cases.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let n = cases.keys().filter(|k| k.starts_with("in.")).count();
    assert!(n >= 13, "{n} cases");
    for k in 0..n {
        let input = &cases[&format!("in.{k}")];
        let expected = &cases[&format!("out.{k}")];
        let (h, w, _) = input.dims3().unwrap();
        let (oh, ow, _) = expected.dims3().unwrap();
        let pixels: Vec<u8> = input.flatten_all().unwrap().to_vec1().unwrap();
        let img = image::RgbImage::from_raw(w as u32, h as u32, pixels).unwrap();
        let out = herd_engine::image::resize(&img, ow as u32, oh as u32);
        let want: Vec<u8> = expected.flatten_all().unwrap().to_vec1().unwrap();
        let got = out.into_raw();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "case {k}: {h}×{w} → {oh}×{ow}: {differ} of {} values differ",
            want.len()
        );
    }
}

#[test]
fn mutation_float_rounding_instead_of_fixed_point_is_caught() {
    // The f64 convolution rounded once at the end (what herd did before) differs from the
    // reference's fixed point somewhere on these cases: the exact test can tell them apart.
    use candle_core::safetensors::load;
    let cases = load(
        fixtures_dir().join("resize").join("cases.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut differ = 0;
    for k in 0..13 {
        let input = &cases[&format!("in.{k}")];
        let expected: Vec<u8> = cases[&format!("out.{k}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (h, w, _) = input.dims3().unwrap();
        let (oh, ow, _) = cases[&format!("out.{k}")].dims3().unwrap();
        let pixels: Vec<u8> = input.flatten_all().unwrap().to_vec1().unwrap();
        let float = float_resize(&pixels, (h, w), (oh, ow));
        differ += float.iter().zip(&expected).filter(|(a, b)| a != b).count();
    }
    assert!(
        differ > 0,
        "the float twin matched everywhere: the fixture cannot catch rounding"
    );
}

/// f64 weights, rounded once per pass (separable, horizontal first).
fn float_resize(px: &[u8], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<u8> {
    fn pass(
        src: &[f64],
        n_in: usize,
        n_out: usize,
        lines: usize,
        stride_in: (usize, usize),
        stride_out: (usize, usize),
    ) -> Vec<u8> {
        let scale = n_in as f64 / n_out as f64;
        let support = scale.max(1.0);
        let mut out = vec![0u8; n_out * lines * 3];
        for line in 0..lines {
            for i in 0..n_out {
                let center = scale * (i as f64 + 0.5);
                let lo = ((center - support + 0.5) as i64).max(0) as usize;
                let hi = ((center + support + 0.5) as usize).min(n_in);
                let ws: Vec<f64> = (lo..hi)
                    .map(|j| (1.0 - ((j as f64 - center + 0.5) / support).abs()).max(0.0))
                    .collect();
                let total: f64 = ws.iter().sum();
                for c in 0..3 {
                    let v: f64 = (lo..hi)
                        .zip(&ws)
                        .map(|(j, wj)| src[(line * stride_in.0 + j * stride_in.1) * 3 + c] * wj)
                        .sum();
                    out[(line * stride_out.0 + i * stride_out.1) * 3 + c] =
                        (v / total).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
    let src: Vec<f64> = px.iter().map(|&v| f64::from(v)).collect();
    let horizontal = if ow != w {
        pass(&src, w, ow, h, (w, 1), (ow, 1))
    } else {
        px.to_vec()
    };
    if oh == h {
        return horizontal;
    }
    let mid: Vec<f64> = horizontal.iter().map(|&v| f64::from(v)).collect();
    pass(&mid, h, oh, ow, (1, ow), (1, ow))
}
