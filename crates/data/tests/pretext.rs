//! Pretext building blocks against their definitions.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use selfsup_data::pretext::{self, Image, PatchGrid};

fn ramp(c: usize, h: usize, w: usize) -> Image {
    Image::new(c, h, w, (0..c * h * w).map(|v| (v * 7 % 251) as u8).collect()).unwrap()
}

#[test]
fn four_quarter_turns_are_identity() {
    let img = ramp(3, 5, 7);
    let mut r = img.clone();
    for k in 1..=4 {
        r = pretext::rotate90(&r, 1);
        assert_eq!((r.height, r.width), if k % 2 == 1 { (7, 5) } else { (5, 7) });
        if k < 4 {
            assert_ne!(r, img);
        }
    }
    assert_eq!(r, img);
    assert_eq!(pretext::rotate90(&img, 2), pretext::rotate90(&pretext::rotate90(&img, 1), 1));
    assert_eq!(pretext::rotate90(&img, 5), pretext::rotate90(&img, 1));
}

#[test]
fn quarter_turn_is_counter_clockwise_like_numpy_rot90() {
    // numpy.rot90([[1, 2], [3, 4]]) == [[2, 4], [1, 3]]
    let img = Image::new(1, 2, 2, vec![1, 2, 3, 4]).unwrap();
    assert_eq!(pretext::rotate90(&img, 1).data, vec![2, 4, 1, 3]);
}

#[test]
fn arbitrary_rotation_matches_quarter_turns_and_fills_corners() {
    let img = ramp(3, 9, 9);
    assert_eq!(pretext::rotate(&img, 0.0, 0), img);
    assert_eq!(pretext::rotate(&img, 90.0, 0), pretext::rotate90(&img, 1));
    assert_eq!(pretext::rotate(&img, -90.0, 0), pretext::rotate90(&img, 3));
    let r = pretext::rotate(&img, 45.0, 200);
    assert_eq!(&r.data[..3], &[200, 200, 200], "corner outside the rotated image takes fill");
    let centre = (4 * 9 + 4) * 3;
    assert_eq!(&r.data[centre..centre + 3], &img.data[centre..centre + 3]);
}

#[test]
fn patch_grid_with_gap_and_jitter() {
    let img = ramp(3, 32, 32);
    let g = PatchGrid { grid: 3, patch: 8, gap: 2, jitter: 1 };
    assert_eq!(g.extent(), 30);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pos = g.positions(32, 32, &mut rng).unwrap();
    assert_eq!(pos.len(), 9);
    for (i, &(t, l)) in pos.iter().enumerate() {
        let (gy, gx) = (i / 3, i % 3);
        // unjittered corner: (32 - 30) / 2 + 1 + 10 * g
        let (t0, l0) = (2 + 10 * gy, 2 + 10 * gx);
        assert!(t.abs_diff(t0) <= 1 && l.abs_diff(l0) <= 1, "patch {i} at {t},{l}");
    }
    let no_jitter = PatchGrid { jitter: 0, ..g };
    let patches = no_jitter.extract(&img, &mut rng).unwrap();
    assert_eq!(patches[4], pretext::crop(&img, 12, 12, 8, 8));
    assert!(PatchGrid { grid: 4, ..g }.positions(32, 32, &mut rng).is_err());
}

#[test]
fn tile_shuffle_and_assembly() {
    let img = ramp(1, 6, 6);
    let g = PatchGrid { grid: 3, patch: 2, gap: 0, jitter: 0 };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tiles = g.extract(&img, &mut rng).unwrap();
    assert_eq!(pretext::assemble_tiles(&tiles, 3).unwrap(), img);
    let perm = [8, 7, 6, 5, 4, 3, 2, 1, 0];
    let shuffled = pretext::shuffle_tiles(&tiles, &perm).unwrap();
    assert_eq!(shuffled[0], tiles[8]);
    // inverse permutation restores the order
    let mut inv = [0usize; 9];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    assert_eq!(pretext::shuffle_tiles(&shuffled, &inv).unwrap(), tiles);
    assert!(pretext::shuffle_tiles(&tiles, &[0, 0, 1, 2, 3, 4, 5, 6, 7]).is_err());
    assert!(pretext::shuffle_tiles(&tiles, &[0, 1]).is_err());
}

#[test]
fn inpainting_masks() {
    let m = pretext::central_mask(8, 8, 0.5);
    assert_eq!(m.iter().filter(|&&v| v == 1).count(), 16);
    assert_eq!(m[2 * 8 + 2], 1);
    assert_eq!(m[8 + 2], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let r = pretext::random_block_mask(32, 32, 6, 0.25, &mut rng).unwrap();
    let hidden = r.iter().filter(|&&v| v == 1).count();
    assert!((256..256 + 36).contains(&hidden), "{hidden}");
    let mut img = ramp(3, 8, 8);
    pretext::apply_mask(&mut img, &m, &[1, 2, 3]).unwrap();
    assert_eq!(&img.data[(3 * 8 + 3) * 3..(3 * 8 + 4) * 3], &[1, 2, 3]);
    assert!(pretext::apply_mask(&mut img, &m[1..], &[1, 2, 3]).is_err());
}

#[test]
fn lab_of_pure_red_and_round_trip() {
    let lab = pretext::rgb_to_lab_pixel([1.0, 0.0, 0.0]);
    let want = [53.24, 80.09, 67.20];
    for (g, w) in lab.iter().zip(want) {
        assert!((g - w).abs() < 0.01, "{lab:?}");
    }
    let white = pretext::rgb_to_lab_pixel([1.0, 1.0, 1.0]);
    assert!((white[0] - 100.0).abs() < 0.01 && white[1].abs() < 0.01 && white[2].abs() < 0.01);
    let img = ramp(3, 16, 16);
    let back = pretext::lab_to_rgb(&pretext::rgb_to_lab(&img.data));
    let max = back.iter().zip(&img.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max <= 1, "round trip error {max}");
}
