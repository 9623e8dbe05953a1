//! Readers against values read from the files with Python (numpy), and bad-input errors.
use selfsup_data::readers::cifar::{self, Variant};
use selfsup_data::{open_dataset, resolve_data_dir, DataError, LabeledSubset, Split};

use crate::common::cifar_data_dir;

#[test]
fn cifar10_test_split_matches_python() {
    let Some(dir) = cifar_data_dir() else { return };
    let ds = open_dataset("cifar10", Split::Test, &dir).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.height(), ds.width()), (10_000, 3, 32, 32));
    // numpy: d = np.fromfile('test_batch.bin', np.uint8).reshape(-1, 3073)
    // d[0,0] = 1; pixel (0,0) = (d[0,1], d[0,1025], d[0,2049]) = (0, 20, 4)
    assert_eq!(ds.label(0), Some(1));
    assert_eq!(&ds.image(0)[..3], &[0, 20, 4]);
    // pixel (row 5, col 7) = (130, 129, 124)
    let p = (5 * 32 + 7) * 3;
    assert_eq!(&ds.image(0)[p..p + 3], &[130, 129, 124]);
    // last image: label 9, last pixel (171, 176, 172)
    assert_eq!(ds.label(9_999), Some(9));
    assert_eq!(&ds.image(9_999)[3069..], &[171, 176, 172]);
    assert_eq!(ds.class_counts().unwrap(), vec![1000; 10]);
    assert_eq!(ds.num_classes(), Some(10));
}

#[test]
fn cifar10_train_split_class_counts() {
    let Some(dir) = cifar_data_dir() else { return };
    let ds = open_dataset("cifar10", Split::Train, &dir).unwrap();
    assert_eq!(ds.len(), 50_000);
    assert_eq!(ds.class_counts().unwrap(), vec![5000; 10]);
    // numpy: first training record label 4, pixel (0,0) = (226, 175, 152)... the first three
    // red bytes are 226 175 152; the first pixel is (red[0], green[0], blue[0]).
    assert_eq!(ds.label(0), Some(4));
    assert_eq!(ds.image(0)[0], 226);
    assert_eq!(ds.image(0)[3], 175);
    assert_eq!(ds.image(0)[6], 152);
    let ck = ds.checksum();
    assert_eq!(ck.len(), 64);
    assert_eq!(ck, ds.clone().checksum());
}

#[test]
fn labeled_subsets_are_stratified_and_seeded() {
    let ds = open_dataset("synthetic:500:8", Split::Train, std::path::Path::new(".")).unwrap();
    let counts = ds.class_counts().unwrap();
    let a = ds.labeled_subset_indices(LabeledSubset::Fraction(0.1), 7).unwrap();
    let b = ds.labeled_subset_indices(LabeledSubset::Fraction(0.1), 7).unwrap();
    let c = ds.labeled_subset_indices(LabeledSubset::Fraction(0.1), 8).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let sub = ds.subset(&a);
    let sub_counts = sub.class_counts().unwrap();
    for (k, (&n, &m)) in counts.iter().zip(&sub_counts).enumerate() {
        assert_eq!(m, ((n as f64 * 0.1).round() as usize).max(1), "class {k}");
    }
    let k3 = ds.labeled_subset(LabeledSubset::PerClass(3), 1).unwrap();
    assert_eq!(k3.class_counts().unwrap(), vec![3; 10]);
    assert!(ds.labeled_subset_indices(LabeledSubset::PerClass(10_000), 1).is_err());
    assert!(ds.labeled_subset_indices(LabeledSubset::Fraction(0.0), 1).is_err());
    // subset copies the right images
    assert_eq!(sub.image(0), ds.image(a[0]));
    assert_eq!(sub.label(1), ds.label(a[1]));
}

#[test]
fn synthetic_is_seeded_and_splits_differ() {
    let d = std::path::Path::new("/nonexistent");
    let a = open_dataset("synthetic:20:16", Split::Train, d).unwrap();
    let b = open_dataset("synthetic:20:16", Split::Train, d).unwrap();
    let t = open_dataset("synthetic:20:16", Split::Test, d).unwrap();
    assert_eq!(a.checksum(), b.checksum());
    assert_ne!(a.checksum(), t.checksum());
    assert_eq!((a.len(), a.height(), a.width(), a.channels()), (20, 16, 16, 3));
    assert!(open_dataset("synthetic:x:16", Split::Train, d).is_err());
    assert!(open_dataset("imagenet", Split::Train, d).is_err());
}

#[test]
fn resolve_data_dir_prefers_the_flag() {
    let p = std::path::Path::new("/some/where");
    assert_eq!(resolve_data_dir(Some(p)), p);
}

#[test]
fn missing_cifar_names_the_path_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let err = open_dataset("cifar10", Split::Test, tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Missing { .. }), "{msg}");
    assert!(msg.contains("cifar-10-batches-bin/test_batch.bin"), "{msg}");
    assert!(msg.contains("cargo xtask fetch cifar10"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn cifar_truncated_and_bad_label_errors_name_record_and_offset() {
    let path = std::path::Path::new("x/test_batch.bin");
    let mut bytes = vec![0u8; 3073 * 2 + 100];
    let (mut px, mut lb) = (Vec::new(), Vec::new());
    let e = cifar::parse(&bytes, Variant::Cifar10, path, &mut px, &mut lb).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x/test_batch.bin: truncated record 2 at byte 6146 (6246 bytes, records are 3073 bytes)"
    );
    bytes.truncate(3073 * 2);
    bytes[3073] = 10;
    let e = cifar::parse(&bytes, Variant::Cifar10, path, &mut px, &mut lb).unwrap_err();
    assert_eq!(e.to_string(), "x/test_batch.bin: label 10 outside 0..10 in record 1 at byte 3073");
    // CIFAR-100: fine label is the second byte
    let mut rec = vec![0u8; 3074];
    rec[0] = 19;
    rec[1] = 99;
    let (mut px, mut lb) = (Vec::new(), Vec::new());
    cifar::parse(&rec, Variant::Cifar100, path, &mut px, &mut lb).unwrap();
    assert_eq!(lb, vec![99]);
    let e = cifar::parse(&[], Variant::Cifar100, path, &mut px, &mut lb).unwrap_err();
    assert!(e.to_string().contains("empty file"));
}
