//! STL-10, IDX (MNIST/Fashion-MNIST) and image-folder readers, the memory-mapped cache, and
//! one-line errors on bad input.
use std::path::Path;

use selfsup_data::readers::{idx, stl10};
use selfsup_data::{open_dataset, DataError, Split};

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn fashion_mnist_from_the_debian_package() {
    let dir = Path::new(idx::FASHION_SYSTEM_DIR);
    if !dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "note: {} absent (apt-get install -y dataset-fashion-mnist); skipping",
            dir.display()
        );
        return;
    }
    // Header and values read with Python's gzip + struct: magic 2051, dims 10000x28x28 for
    // t10k; first test labels 9, 2, 1, 1.
    let raw = idx::maybe_gunzip(std::fs::read(dir.join("t10k-images-idx3-ubyte.gz")).unwrap(), dir)
        .unwrap();
    let (h, _) = idx::parse_header(&raw, idx::IMAGES_MAGIC, dir).unwrap();
    assert_eq!((h.magic, h.dims.clone()), (2051, vec![10_000, 28, 28]));
    let ds = open_dataset("fashion-mnist", Split::Test, Path::new("/nonexistent")).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.height(), ds.width()), (10_000, 1, 28, 28));
    assert_eq!((0..4).map(|i| ds.label(i).unwrap()).collect::<Vec<_>>(), vec![9, 2, 1, 1]);
    assert_eq!(ds.class_counts().unwrap(), vec![1000; 10]);
}

#[test]
fn idx_raw_and_gz_parse_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| v as u8).collect();
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_bytes(0x803, &[3, 4, 5], &pixels))
        .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte.gz"),
        gzip(&idx_bytes(0x801, &[3], &[7, 0, 9])),
    )
    .unwrap();
    let ds = open_dataset("mnist", Split::Train, tmp.path()).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.height(), ds.width()), (3, 1, 4, 5));
    assert_eq!(ds.image(1)[0], 20);
    assert_eq!(ds.label(2), Some(9));
    // The test split is missing: the message says where to put it.
    let e = open_dataset("mnist", Split::Test, tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("mnist/t10k-images-idx3-ubyte.gz") && e.contains("cargo xtask fetch mnist"),
        "{e}"
    );
}

#[test]
fn idx_bad_input_errors() {
    let p = Path::new("f.idx");
    let img = idx_bytes(0x803, &[2, 2, 2], &[0; 8]);
    let lab = idx_bytes(0x801, &[2], &[1, 2]);
    assert!(idx::parse(&img, p, &lab, p).is_ok());
    let e = idx::parse(&idx_bytes(0x801, &[2, 2, 2], &[0; 8]), p, &lab, p).unwrap_err();
    assert_eq!(e.to_string(), "f.idx: wrong magic 0x00000801 at byte 0 (expected 0x00000803)");
    let e = idx::parse(&img[..20], p, &lab, p).unwrap_err();
    assert!(e.to_string().contains("need 8 data bytes after byte 16, file has 4"), "{e}");
    let e = idx::parse(&img, p, &idx_bytes(0x801, &[2], &[1, 12]), p).unwrap_err();
    assert_eq!(e.to_string(), "f.idx: label 12 outside 0..10 in record 1 at byte 9");
    let e = idx::parse(&img, p, &idx_bytes(0x801, &[3], &[1, 1, 1]), p).unwrap_err();
    assert!(e.to_string().contains("3 labels for 2 images"));
    let e = idx::maybe_gunzip(vec![0x1f, 0x8b, 1, 2, 3], p).unwrap_err();
    assert!(e.to_string().starts_with("f.idx: gzip"), "{e}");
}

/// Writes an STL-10-like folder: `n` train images, `m` unlabeled, with pixel (row y, col x,
/// channel c) = (7y + 3x + 50c) mod 256, stored channel-planar and column-major.
fn write_stl(dir: &Path, n: usize, m: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let image = |k: usize| {
        let mut v = vec![0u8; stl10::IMAGE_BYTES];
        for c in 0..3 {
            for x in 0..96 {
                for y in 0..96 {
                    v[c * 9216 + x * 96 + y] = ((7 * y + 3 * x + 50 * c + k) % 256) as u8;
                }
            }
        }
        v
    };
    let xs: Vec<u8> = (0..n).flat_map(image).collect();
    std::fs::write(dir.join("train_X.bin"), xs).unwrap();
    std::fs::write(dir.join("train_y.bin"), (0..n).map(|i| (i % 10 + 1) as u8).collect::<Vec<_>>())
        .unwrap();
    let us: Vec<u8> = (0..m).flat_map(|k| image(100 + k)).collect();
    std::fs::write(dir.join("unlabeled_X.bin"), us).unwrap();
}

#[test]
fn stl10_is_transposed_and_unlabeled_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    write_stl(&tmp.path().join("stl10_binary"), 3, 4);
    let ds = open_dataset("stl10", Split::Train, tmp.path()).unwrap();
    assert_eq!((ds.len(), ds.height(), ds.width()), (3, 96, 96));
    let (y, x, c) = (2, 5, 1);
    assert_eq!(ds.image(1)[(y * 96 + x) * 3 + c], ((7 * y + 3 * x + 50 * c + 1) % 256) as u8);
    assert_eq!(ds.label(0), Some(0));
    assert_eq!(ds.label(2), Some(2));
    let un = open_dataset("stl10", Split::Unlabeled, tmp.path()).unwrap();
    assert_eq!(un.len(), 4);
    assert_eq!(un.label(0), None);
    assert_eq!(un.image(3)[(y * 96 + x) * 3 + c], ((7 * y + 3 * x + 50 * c + 103) % 256) as u8);
    let both = open_dataset("stl10", Split::TrainUnlabeled, tmp.path()).unwrap();
    assert_eq!(both.len(), 7);
    assert_eq!((both.label(1), both.label(5)), (Some(1), None));
    assert_eq!(both.image(4), un.image(1));
    let caches = std::fs::read_dir(tmp.path().join(".cache")).unwrap().count();
    assert_eq!(caches, 2);
    // Reopening uses the cache and gives the same data.
    let again = open_dataset("stl10", Split::Unlabeled, tmp.path()).unwrap();
    assert_eq!(again.checksum(), un.checksum());
}

#[test]
fn stl10_bad_labels_and_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stl10_binary");
    write_stl(&dir, 2, 1);
    std::fs::write(dir.join("train_y.bin"), [1u8, 11]).unwrap();
    let e = open_dataset("stl10", Split::Train, tmp.path()).unwrap_err().to_string();
    assert!(e.ends_with("train_y.bin: label 11 outside 1..=10 at byte 1"), "{e}");
    let xs = std::fs::read(dir.join("train_X.bin")).unwrap();
    std::fs::write(dir.join("train_X.bin"), &xs[..xs.len() - 5]).unwrap();
    let e = open_dataset("stl10", Split::Train, tmp.path()).unwrap_err().to_string();
    assert!(e.contains("train_X.bin: truncated image 1 at byte 27648"), "{e}");
}

fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed.wrapping_add(x as u8), (y as u8).wrapping_mul(3), seed ^ 0x55])
    });
    img.save(path).unwrap();
}

#[test]
fn image_folder_with_classes_is_decoded_once_into_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..3u8 {
            write_png(&root.join(class).join(format!("{i}.png")), 6, 4, 10 * k as u8 + i);
        }
    }
    let data = tmp.path().join("data");
    let spec = format!("folder:{}", root.display());
    let ds = open_dataset(&spec, Split::Train, &data).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.height(), ds.width()), (6, 3, 4, 6));
    assert_eq!(ds.num_classes(), Some(2));
    assert_eq!(ds.class_counts().unwrap(), vec![3, 3]);
    // dog/1.png: seed 11, pixel (y=2, x=3) = (14, 6, 11 ^ 0x55)
    assert_eq!(ds.label(4), Some(1));
    assert_eq!(&ds.image(4)[(2 * 6 + 3) * 3..(2 * 6 + 4) * 3], &[14, 6, 11 ^ 0x55]);
    let cache: Vec<_> = std::fs::read_dir(data.join(".cache")).unwrap().collect();
    assert_eq!(cache.len(), 1);
    let again = open_dataset(&spec, Split::Train, &data).unwrap();
    assert_eq!(again.checksum(), ds.checksum());
    // A changed file changes the key: a second cache appears.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_png(&root.join("cat/0.png"), 6, 4, 99);
    let changed = open_dataset(&spec, Split::Train, &data).unwrap();
    assert_ne!(changed.checksum(), ds.checksum());
    assert_eq!(std::fs::read_dir(data.join(".cache")).unwrap().count(), 2);
    // Resizing to a common size.
    write_png(&root.join("dog/big.png"), 12, 8, 1);
    let e = open_dataset(&spec, Split::Train, &data).unwrap_err().to_string();
    assert!(e.contains("big.png: image is 12x8 but the first is 6x4"), "{e}");
    let resized = open_dataset(&format!("{spec}:5"), Split::Train, &data).unwrap();
    assert_eq!((resized.len(), resized.height(), resized.width()), (7, 5, 5));
}

#[test]
fn image_folder_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("flat");
    std::fs::create_dir_all(&root).unwrap();
    let spec = format!("folder:{}", root.display());
    let e = open_dataset(&spec, Split::Train, tmp.path()).unwrap_err();
    assert!(e.to_string().ends_with("flat: empty folder (no .jpg, .jpeg or .png files)"), "{e}");
    write_png(&root.join("a.png"), 3, 3, 0);
    std::fs::write(root.join("b.jpg"), b"not a jpeg at all").unwrap();
    let e = open_dataset(&spec, Split::Train, tmp.path()).unwrap_err();
    assert!(matches!(e, DataError::File { .. }));
    assert!(e.to_string().contains("b.jpg: cannot decode image"), "{e}");
    std::fs::remove_file(root.join("b.jpg")).unwrap();
    let ds = open_dataset(&spec, Split::Unlabeled, tmp.path()).unwrap();
    assert_eq!((ds.len(), ds.label(0), ds.num_classes()), (1, None, None));
    let classes = tmp.path().join("classes");
    std::fs::create_dir_all(classes.join("empty")).unwrap();
    let e = open_dataset(&format!("folder:{}", classes.display()), Split::Train, tmp.path())
        .unwrap_err();
    assert!(
        e.to_string().ends_with("classes/empty: empty class folder (no .jpg, .jpeg or .png files)"),
        "{e}"
    );
    let e = open_dataset("folder:/does/not/exist", Split::Train, tmp.path()).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
}

#[test]
fn image_folder_without_splits_is_a_training_set_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("flat");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        write_png(&root.join(class).join("0.png"), 4, 4, class.len() as u8);
    }
    let spec = format!("folder:{}", root.display());
    for split in [Split::Train, Split::TrainUnlabeled, Split::Unlabeled] {
        assert_eq!(open_dataset(&spec, split, tmp.path()).unwrap().len(), 2, "{split:?}");
    }
    // Its test split would be its training images: refused, naming the missing subfolder.
    let e = open_dataset(&spec, Split::Test, tmp.path()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("folder:{} has no test/ subfolder", root.display())), "{e}");
    assert!(e.contains("cannot be evaluated"), "{e}");
    assert!(e.ends_with(&format!("put the held-out images in {}/", root.join("test").display())));
    assert!(!e.contains('\n'), "{e}");
    // With SIZE too.
    let e = open_dataset(&format!("{spec}:3"), Split::Test, tmp.path()).unwrap_err().to_string();
    assert!(e.contains("has no test/ subfolder"), "{e}");
}

#[test]
fn image_folder_with_splits_names_the_missing_split_subfolder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("split");
    std::fs::create_dir_all(root.join("train/cat")).unwrap();
    write_png(&root.join("train/cat/0.png"), 4, 4, 1);
    write_png(&root.join("train/cat/1.png"), 4, 4, 2);
    let spec = format!("folder:{}", root.display());
    assert_eq!(open_dataset(&spec, Split::Train, tmp.path()).unwrap().len(), 2);
    assert_eq!(open_dataset(&spec, Split::TrainUnlabeled, tmp.path()).unwrap().len(), 2);
    let e = open_dataset(&spec, Split::Test, tmp.path()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "folder:{} has no test/ subfolder for the test split (it has train/); put those \
             images in {}/",
            root.display(),
            root.join("test").display()
        )
    );
    let e = open_dataset(&spec, Split::Unlabeled, tmp.path()).unwrap_err().to_string();
    assert!(e.contains("has no unlabeled/ subfolder for the unlabeled split (it has train/)"));
    // A test split alone serves evaluation but not training.
    std::fs::create_dir_all(root.join("test/cat")).unwrap();
    write_png(&root.join("test/cat/0.png"), 4, 4, 3);
    assert_eq!(open_dataset(&spec, Split::Test, tmp.path()).unwrap().len(), 1);
    std::fs::rename(root.join("train"), root.join("elsewhere")).unwrap();
    let e = open_dataset(&spec, Split::Train, tmp.path()).unwrap_err().to_string();
    assert!(e.contains("has no train/ subfolder for the train split (it has test/)"), "{e}");
}
