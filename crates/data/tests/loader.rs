//! The loader: complete epochs, determinism across thread counts and prefetch settings,
//! resuming with `epoch_from`, and batch shapes.
use std::collections::HashSet;

use selfsup_data::{open_dataset, Batch, ImageDataset, Loader, LoaderConfig, Pipeline, Split};
use tch::Tensor;

fn synthetic(n: usize) -> ImageDataset {
    open_dataset(&format!("synthetic:{n}:12"), Split::Train, std::path::Path::new(".")).unwrap()
}

fn views() -> Vec<Pipeline> {
    vec![Pipeline::simclr(12, &[0.5; 3], &[0.25; 3]), Pipeline::simclr(16, &[0.5; 3], &[0.25; 3])]
}

fn indices(b: &Batch) -> Vec<i64> {
    Vec::<i64>::try_from(&b.indices).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
}

#[test]
fn epoch_serves_every_image_once() {
    let ds = synthetic(103);
    for drop_last in [false, true] {
        let cfg = LoaderConfig { batch_size: 10, drop_last, threads: 2, ..Default::default() };
        let loader = Loader::new(ds.clone(), views(), cfg).unwrap();
        let mut seen = Vec::new();
        let mut n_batches = 0;
        for b in loader.epoch(3) {
            let b = b.unwrap();
            assert_eq!(b.views[0].size()[1..], [3, 12, 12]);
            assert_eq!(b.views[1].size()[1..], [3, 16, 16]);
            let idx = indices(&b);
            let labels = Vec::<i64>::try_from(&b.labels).unwrap();
            for (&i, &y) in idx.iter().zip(&labels) {
                assert_eq!(ds.label(i as usize), Some(y));
            }
            seen.extend(idx);
            n_batches += 1;
        }
        assert_eq!(n_batches, loader.batches_per_epoch());
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "an image repeated");
        if drop_last {
            assert_eq!((n_batches, seen.len()), (10, 100));
        } else {
            assert_eq!((n_batches, seen.len()), (11, 103));
            assert_eq!(unique, (0..103).collect());
        }
    }
}

#[test]
fn output_is_identical_across_thread_counts_and_prefetch() {
    let ds = synthetic(40);
    let run = |threads: usize, prefetch: usize| -> Vec<(Vec<i64>, Vec<f32>, Vec<f32>)> {
        let cfg =
            LoaderConfig { batch_size: 16, threads, prefetch, seed: 11, ..Default::default() };
        let loader = Loader::new(ds.clone(), views(), cfg).unwrap();
        loader
            .epoch(1)
            .map(|b| {
                let b = b.unwrap();
                (indices(&b), flat(&b.views[0]), flat(&b.views[1]))
            })
            .collect()
    };
    let one = run(1, 0);
    // Inside a local two-thread rayon pool as well as with the loader's own pools.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let two = pool.install(|| run(2, 2));
    let three = run(3, 1);
    assert_eq!(one, two);
    assert_eq!(one, three);
    // The two views of a sample differ, and epochs differ.
    assert_ne!(one[0].1[..3 * 144], one[0].2[..3 * 144]);
    let cfg = LoaderConfig { batch_size: 16, threads: 1, seed: 11, ..Default::default() };
    let loader = Loader::new(ds, views(), cfg).unwrap();
    let e2 = loader.epoch(2).next().unwrap().unwrap();
    assert_ne!(indices(&e2), one[0].0);
}

#[test]
fn epoch_from_resumes_with_the_same_batches() {
    let ds = synthetic(50);
    let cfg = LoaderConfig { batch_size: 8, threads: 2, seed: 5, ..Default::default() };
    let loader = Loader::new(ds, views(), cfg).unwrap();
    let all: Vec<Batch> = loader.epoch(4).map(Result::unwrap).collect();
    let tail: Vec<Batch> = loader.epoch_from(4, 3).map(Result::unwrap).collect();
    assert_eq!(tail.len(), all.len() - 3);
    for (a, b) in all[3..].iter().zip(&tail) {
        assert_eq!(indices(a), indices(b));
        assert_eq!(flat(&a.views[0]), flat(&b.views[0]));
    }
    assert_eq!(loader.epoch_from(4, 100).count(), 0);
}

#[test]
fn unshuffled_order_and_dropping_the_iterator_early() {
    let ds = synthetic(30);
    let cfg = LoaderConfig {
        batch_size: 7,
        shuffle: false,
        threads: 1,
        prefetch: 1,
        ..Default::default()
    };
    let loader = Loader::new(ds, vec![Pipeline::identity()], cfg).unwrap();
    let mut it = loader.epoch(0);
    let first = it.next().unwrap().unwrap();
    assert_eq!(indices(&first), (0..7).collect::<Vec<_>>());
    drop(it); // the producer thread stops and is joined
    let v = flat(&first.views[0]);
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
}

#[test]
fn loader_rejects_bad_settings() {
    let ds = synthetic(5);
    let cfg = |bs| LoaderConfig { batch_size: bs, drop_last: true, ..Default::default() };
    assert!(Loader::new(ds.clone(), views(), cfg(0)).is_err());
    assert!(Loader::new(ds.clone(), views(), cfg(6)).is_err());
    assert!(Loader::new(ds.clone(), vec![], cfg(2)).is_err());
    let bad = Pipeline::normalize(&[0.5], &[0.5]);
    let e = Loader::new(ds, vec![bad], cfg(2)).unwrap_err();
    assert!(e.to_string().starts_with("view 0: pipeline op 0"), "{e}");
}

#[test]
fn shards_of_a_batch_are_the_single_process_batch_split_by_rank() {
    let ds = synthetic(50);
    let cfg = |world_size, rank| LoaderConfig {
        batch_size: 12,
        drop_last: true,
        threads: 1,
        seed: 3,
        world_size,
        rank,
        ..Default::default()
    };
    let whole = Loader::new(ds.clone(), views(), cfg(1, 0)).unwrap();
    let shards: Vec<Loader> =
        (0..3).map(|r| Loader::new(ds.clone(), views(), cfg(3, r)).unwrap()).collect();
    assert_eq!(shards[2].batches_per_epoch(), whole.batches_per_epoch());
    for (b, full) in whole.epoch(2).enumerate() {
        let full = full.unwrap();
        let parts: Vec<Batch> = shards.iter().map(|l| l.batch(2, b).unwrap()).collect();
        let idx: Vec<i64> = parts.iter().flat_map(indices).collect();
        assert_eq!(idx, indices(&full), "batch {b}");
        for v in 0..2 {
            let cat = Tensor::cat(&parts.iter().map(|p| &p.views[v]).collect::<Vec<_>>(), 0);
            assert_eq!(flat(&cat), flat(&full.views[v]), "batch {b} view {v}: same augmentations");
        }
    }
    let e = Loader::new(ds.clone(), views(), cfg(5, 0)).unwrap_err().to_string();
    assert!(e.contains("a batch of 12 images cannot be split into 5 equal shards"), "{e}");
    let e = Loader::new(ds.clone(), views(), cfg(3, 3)).unwrap_err().to_string();
    assert!(e.contains("loader rank 3 of world_size 3"), "{e}");
    let e = Loader::new(ds, views(), LoaderConfig { drop_last: false, ..cfg(2, 0) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("(sharding needs drop_last)"), "{e}");
}

/// A host allocator (as the trainer gives on CUDA, for pinned memory) gets the views written
/// into its tensors, the same values as the loader's own allocation; one that hands out a
/// tensor of the wrong shape, or fails, stops the epoch with an error naming the view and batch.
#[test]
fn a_host_allocator_gets_the_same_batches_and_a_bad_one_is_named() {
    use selfsup_data::HostAlloc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let ds = synthetic(30);
    let cfg = LoaderConfig { batch_size: 8, threads: 2, seed: 3, ..Default::default() };
    let plain = Loader::new(ds.clone(), views(), cfg.clone()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let alloc: HostAlloc = Arc::new(move |shape: &[i64]| {
        counted.fetch_add(1, Ordering::SeqCst);
        // Not zeroed: the loader must overwrite every element.
        Ok(Tensor::full(shape, f64::NAN, (tch::Kind::Float, tch::Device::Cpu)))
    });
    let with = Loader::with_host_alloc(ds.clone(), views(), cfg.clone(), Some(alloc)).unwrap();
    let (mut a, mut b) = (plain.epoch(1), with.epoch(1));
    let mut n = 0;
    while let (Some(x), Some(y)) = (a.next(), b.next()) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(indices(&x), indices(&y));
        for (u, v) in x.views.iter().zip(&y.views) {
            assert_eq!(flat(u), flat(v), "batch {n}");
        }
        n += 1;
    }
    assert_eq!(n, plain.batches_per_epoch());
    assert_eq!(calls.load(Ordering::SeqCst), 2 * n, "one allocation per view and batch");

    let wrong: HostAlloc = Arc::new(|shape: &[i64]| {
        Ok(Tensor::zeros([shape[0], 1], (tch::Kind::Float, tch::Device::Cpu)))
    });
    let bad = Loader::with_host_alloc(ds.clone(), views(), cfg.clone(), Some(wrong)).unwrap();
    let e = bad.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(e.contains("view 0 of batch 0") && e.contains("[8, 3, 12, 12]"), "{e}");
    let failing: HostAlloc = Arc::new(|_: &[i64]| Err("no GPU".to_string()));
    let bad = Loader::with_host_alloc(ds, views(), cfg, Some(failing)).unwrap();
    let e = bad.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(e.contains("allocating view 0 of batch 0: no GPU"), "{e}");
}
