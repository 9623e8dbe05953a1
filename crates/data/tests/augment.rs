//! Augmentations against their definitions and against torchvision's output on fixed
//! parameters (fixture written by `fixtures/make_torchvision_fixture.py`).
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use selfsup_data::augment::{self, CropBox, FloatImage, JitterParams, Source};
use selfsup_data::{Op, Pipeline};
use serde_json::Value;

struct Fixture {
    json: Value,
    img: FloatImage,
    pixels: Vec<u8>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/torchvision_ops.json");
    let json: Value = serde_json::from_str(text).unwrap();
    let (h, w) =
        (json["height"].as_u64().unwrap() as usize, json["width"].as_u64().unwrap() as usize);
    let pixels: Vec<u8> =
        json["pixels_hwc"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let img = FloatImage::from_u8(&pixels, 3, h, w);
    Fixture { json, img, pixels }
}

fn expected(f: &Fixture, case: &str) -> (Vec<usize>, Vec<f32>) {
    let c = &f.json["cases"][case];
    let shape = c["shape_chw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize);
    let data = c["hwc"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32);
    (shape.collect(), data.collect())
}

fn assert_close(case: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{case}: length");
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(err <= tol, "{case}: max error {err} at {i} (got {}, want {})", got[i], want[i]);
}

fn check(case: &str, tol: f32, op: impl Fn(&mut FloatImage)) {
    let f = fixture();
    let mut img = f.img.clone();
    op(&mut img);
    let (_, want) = expected(&f, case);
    assert_close(case, &img.data, &want, tol);
}

#[test]
fn colour_ops_match_torchvision() {
    check("brightness_1.3", 1e-6, |i| augment::adjust_brightness(i, 1.3));
    check("brightness_0.6", 1e-6, |i| augment::adjust_brightness(i, 0.6));
    check("contrast_0.7", 1e-6, |i| augment::adjust_contrast(i, 0.7));
    check("contrast_1.4", 1e-6, |i| augment::adjust_contrast(i, 1.4));
    check("saturation_0.5", 1e-6, |i| augment::adjust_saturation(i, 0.5));
    check("saturation_1.4", 1e-6, |i| augment::adjust_saturation(i, 1.4));
    check("hue_0.08", 1e-5, |i| augment::adjust_hue(i, 0.08));
    check("hue_-0.3", 1e-5, |i| augment::adjust_hue(i, -0.3));
    check("hue_0.5", 1e-5, |i| augment::adjust_hue(i, 0.5));
    check("grayscale", 1e-6, |i| augment::grayscale(i, true));
    check("solarize_0.5", 2e-7, |i| augment::solarize(i, 0.5));
    check("hflip", 2e-7, augment::hflip);
    check("normalize", 1e-5, |i| {
        augment::normalize(i, &[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616])
    });
}

#[test]
fn jitter_in_fixed_order_matches_torchvision() {
    // saturation 1.3, brightness 0.8, hue -0.07, contrast 1.2
    let p = JitterParams {
        order: [2, 0, 3, 1],
        brightness: Some(0.8),
        contrast: Some(1.2),
        saturation: Some(1.3),
        hue: Some(-0.07),
    };
    check("jitter_2031", 1e-5, |i| p.apply(i));
}

#[test]
fn blur_matches_torchvision() {
    check("blur_5_1.2", 1e-6, |i| augment::gaussian_blur(i, 5, 1.2));
    check("blur_3_0.4", 1e-6, |i| augment::gaussian_blur(i, 3, 0.4));
}

#[test]
fn resized_crop_matches_torchvision_antialiased_bilinear() {
    let f = fixture();
    for (name, v) in f.json["crops"].as_object().unwrap() {
        let p: Vec<usize> =
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let crop = CropBox { top: p[0], left: p[1], height: p[2], width: p[3] };
        let out = augment::resample(Source::U8(&f.pixels), 3, f.img.width, crop, p[4], p[5]);
        let (shape, want) = expected(&f, name);
        assert_eq!(shape, vec![3, p[4], p[5]]);
        assert_close(name, &out.data, &want, 1e-5);
        // The float source gives the same result.
        let out2 = augment::resample(Source::F32(&f.img.data), 3, f.img.width, crop, p[4], p[5]);
        assert_close(name, &out2.data, &out.data, 1e-6);
    }
}

#[test]
fn flip_twice_is_identity() {
    let f = fixture();
    let mut img = f.img.clone();
    augment::hflip(&mut img);
    assert_ne!(img, f.img);
    augment::hflip(&mut img);
    assert_eq!(img, f.img);
}

#[test]
fn hsv_round_trip() {
    let f = fixture();
    for p in f.img.data.chunks_exact(3) {
        let (h, s, v) = augment::rgb_to_hsv(p[0], p[1], p[2]);
        let (r, g, b) = augment::hsv_to_rgb(h, s, v);
        assert!((r - p[0]).abs() < 1e-5 && (g - p[1]).abs() < 1e-5 && (b - p[2]).abs() < 1e-5);
    }
}

#[test]
fn random_resized_crop_box_stays_inside_and_covers_scale() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut areas = Vec::new();
    for _ in 0..2000 {
        let b = augment::random_resized_crop_box(&mut rng, 32, 40, [0.08, 1.0], [0.75, 4.0 / 3.0]);
        assert!(b.height >= 1 && b.width >= 1);
        assert!(b.top + b.height <= 32 && b.left + b.width <= 40);
        areas.push((b.height * b.width) as f64 / (32.0 * 40.0));
    }
    let min = areas.iter().cloned().fold(1.0, f64::min);
    let max = areas.iter().cloned().fold(0.0, f64::max);
    assert!(min < 0.12 && max > 0.9, "areas {min}..{max}");
    // Fallback: a ratio range the image cannot meet gives a centred crop of the clamped ratio.
    let b = augment::random_resized_crop_box(&mut rng, 10, 100, [0.99, 1.0], [1.0, 1.0]);
    assert_eq!((b.height, b.width), (10, 10));
    assert_eq!(b.left, 45);
}

#[test]
fn pipeline_serde_round_trip_and_defaults() {
    let p = Pipeline::simclr(96, &[0.5; 3], &[0.25; 3]);
    let text = serde_json::to_string(&p).unwrap();
    let back: Pipeline = serde_json::from_str(&text).unwrap();
    assert_eq!(p, back);
    assert!(text.contains(r#""op":"random_resized_crop""#));
    assert!(text.contains(r#""op":"gaussian_blur","kernel_size":9"#));
    let q: Pipeline = serde_json::from_str(
        r#"{"ops":[{"op":"random_crop","size":32,"padding":4},{"op":"horizontal_flip"}]}"#,
    )
    .unwrap();
    assert_eq!(q.ops[1], Op::HorizontalFlip { p: 0.5 });
    assert!(
        serde_json::from_str::<Pipeline>(r#"{"ops":[{"op":"horizontal_flip","q":1}]}"#).is_err()
    );
    assert!(serde_json::from_str::<Pipeline>(r#"{"ops":[{"op":"warp"}]}"#).is_err());
}

#[test]
fn pipeline_shapes_and_checks() {
    let p = Pipeline::simclr_cifar();
    assert_eq!(p.output_shape(3, 32, 32), (3, 32, 32));
    assert_eq!(Pipeline::simclr_96().check(3, 32, 32).unwrap(), (3, 96, 96));
    let gray = Pipeline { ops: vec![Op::Grayscale { p: 1.0, keep_channels: false }] };
    assert_eq!(gray.check(3, 8, 8).unwrap(), (1, 8, 8));
    let bad = Pipeline { ops: vec![Op::RandomCrop { size: 40, padding: 2 }] };
    assert!(bad.check(3, 32, 32).is_err());
    assert!(Pipeline::normalize(&[0.5], &[0.5]).check(3, 4, 4).is_err());
    let resize = Pipeline { ops: vec![Op::Resize { size: 16 }] };
    assert_eq!(resize.output_shape(3, 32, 64), (3, 16, 32));
}

#[test]
fn identity_pipeline_is_chw_over_255() {
    let f = fixture();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (h, w) = (f.img.height, f.img.width);
    let out = Pipeline::identity().apply_to_vec(&f.pixels, 3, h, w, &mut rng);
    for c in 0..3 {
        for p in 0..h * w {
            assert_eq!(out[c * h * w + p], f.pixels[p * 3 + c] as f32 / 255.0);
        }
    }
}

#[test]
fn cifar_random_crop_with_padding_shifts_the_image() {
    let f = fixture();
    let mut seen_pad = false;
    for seed in 0..50 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = Pipeline { ops: vec![Op::RandomCrop { size: 9, padding: 2 }] };
        let out = p.apply_to_vec(&f.pixels, 3, 9, 11, &mut rng);
        assert_eq!(out.len(), 3 * 9 * 9);
        // every output value is either zero padding or some source value
        for &v in &out {
            assert!(v == 0.0 || f.pixels.iter().any(|&s| s as f32 / 255.0 == v));
        }
        seen_pad |= out[0] == 0.0;
    }
    assert!(seen_pad);
}

#[test]
fn center_crop_matches_torchvision_offsets_and_padding() {
    // Values from torchvision.transforms.functional.center_crop on arange images (1 channel).
    let run = |h: usize, w: usize, size: usize| -> Vec<f32> {
        let img: Vec<u8> = (0..h * w).map(|v| v as u8).collect();
        let p = Pipeline { ops: vec![Op::CenterCrop { size }] };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        p.apply_to_vec(&img, 1, h, w, &mut rng).iter().map(|v| (v * 255.0).round()).collect()
    };
    assert_eq!(run(5, 8, 3), [10.0, 11.0, 12.0, 18.0, 19.0, 20.0, 26.0, 27.0, 28.0]);
    assert_eq!(run(6, 9, 3), [21.0, 22.0, 23.0, 30.0, 31.0, 32.0, 39.0, 40.0, 41.0]);
    let padded = run(5, 8, 7);
    assert_eq!(padded[..8], [0.0; 8]);
    assert_eq!(padded[8..14], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(padded[42..], [0.0; 7]);
}
