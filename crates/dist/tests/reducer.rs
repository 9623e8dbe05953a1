//! The bucketed reducer (DDP's `Reducer`) on ranks that are threads of this process, against
//! the single bucket after backward (`average_gradients`).
use std::sync::Arc;
use std::time::Duration;

use selfsup_dist::{average_gradients, on_local_ranks, Collectives, GradReducer};
use tch::{nn, nn::Module, Device, Kind, Tensor};

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
}

/// A four-layer MLP's parameters (sorted by name, as the trainer keeps them) and its loss on
/// rank `rank`'s shard: inputs from a formula, so that ranks and runs agree without a shared
/// generator.
fn network(rank: usize) -> (nn::VarStore, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "l1", 12, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "l2", 32, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "l3", 32, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "l4", 16, 3, Default::default()));
    // The same weights on every rank, from a formula, by name.
    tch::no_grad(|| {
        for (i, (_, mut v)) in sorted(&vs).into_iter().enumerate() {
            let n = v.numel() as i64;
            let w = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + 0.01 * i as f64))
                .sin()
                * 0.3;
            v.copy_(&w.view(v.size().as_slice()));
        }
    });
    let x = (Tensor::arange(8 * 12, (Kind::Float, Device::Cpu)) * 0.11 + rank as f64).cos();
    let loss = net.forward(&x.view([8, 12])).square().mean(Kind::Float);
    (vs, loss)
}

fn sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// What one step leaves on a rank: the gradients, the loss's mean, the summed flag, and (with
/// the reducer) how many buckets started during backward out of how many.
type Outcome = (Vec<Vec<f32>>, f32, f32, (usize, usize));

/// One step on this rank with the reducer (buckets of `bucket_bytes`) or, without, with
/// `average_gradients`.
fn step(g: &Arc<dyn Collectives>, bucket_bytes: Option<usize>) -> Outcome {
    let (vs, loss) = network(g.rank());
    let params = sorted(&vs);
    let mut flags = [g.rank() as f32];
    let means = [loss.detach()];
    let early = match bucket_bytes {
        Some(b) => {
            let reducer = GradReducer::new(g.clone(), &params, b).unwrap();
            reducer.arm();
            loss.backward();
            (reducer.finish(&means, &mut flags).unwrap(), reducer.buckets().len())
        }
        None => {
            loss.backward();
            average_gradients(g.as_ref(), &params, &means, &mut flags).unwrap();
            (0, 1)
        }
    };
    let grads = params.iter().map(|(_, p)| values(&p.grad())).collect();
    (grads, means[0].double_value(&[]) as f32, flags[0], early)
}

#[test]
fn buckets_started_during_backward_average_to_the_same_bits_as_one_bucket_after() {
    let t = Duration::from_secs(30);
    let one = on_local_ranks(3, t, |g| step(g, None)).unwrap();
    // 1 KiB buckets: each layer's weight (and the small biases beside it) a bucket or more.
    let bucketed = on_local_ranks(3, t, |g| step(g, Some(1 << 10))).unwrap();
    let whole = on_local_ranks(3, t, |g| step(g, Some(usize::MAX))).unwrap();
    for rank in 0..3 {
        let (want, want_loss, want_flags, _) = &one[rank];
        for (name, got) in [("1 KiB buckets", &bucketed[rank]), ("one bucket", &whole[rank])] {
            let (grads, loss, flags, _) = got;
            let same = grads.iter().flatten().zip(want.iter().flatten());
            assert!(same.clone().all(|(a, b)| a.to_bits() == b.to_bits()), "{name}, rank {rank}");
            assert_eq!(loss.to_bits(), want_loss.to_bits(), "{name}: the loss mean");
            assert_eq!((*flags, *want_flags), (3.0, 3.0), "{name}: flags 0 + 1 + 2");
        }
        assert_eq!(bucketed[rank].0, bucketed[0].0, "every rank holds the same gradients");
        // Every bucket starts from a hook, inside backward (the first layer's, whose gradients
        // arrive last, as backward ends); the earlier ones while the layers below still run.
        let (early, buckets) = bucketed[rank].3;
        assert!(early == buckets && buckets >= 4, "rank {rank}: {early} of {buckets} early");
    }
    // The averaged gradient is the mean of the ranks' own gradients.
    let own: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|r| {
            let (vs, loss) = network(r);
            loss.backward();
            sorted(&vs).iter().map(|(_, p)| values(&p.grad())).collect()
        })
        .collect();
    for (i, got) in one[0].0.iter().flatten().enumerate() {
        let mean = own.iter().map(|g| g.iter().flatten().nth(i).unwrap()).sum::<f32>() / 3.0;
        assert!((got - mean).abs() <= 1e-6 * (1.0 + mean.abs()), "element {i}: {got} vs {mean}");
    }
}

#[test]
fn buckets_follow_the_parameters_backwards_and_respect_the_cap() {
    let out = on_local_ranks(1, Duration::from_secs(30), |g| {
        let (vs, _) = network(0);
        let params = sorted(&vs);
        let sizes: Vec<usize> = params.iter().map(|(_, p)| p.numel() * 4).collect();
        let reducer = GradReducer::new(g.clone(), &params, 2048).unwrap();
        let buckets = reducer.buckets().to_vec();
        // A second reducer on the same parameters is refused (one hook slot a tensor).
        let again = GradReducer::new(g.clone(), &params, 2048).unwrap_err().to_string();
        drop(reducer);
        // Dropping the first frees the slot.
        let third = GradReducer::new(g.clone(), &params, 0).map(|r| r.buckets().len());
        (sizes, buckets, again, third.unwrap())
    })
    .unwrap();
    let (sizes, buckets, again, third) = &out[0];
    let order: Vec<usize> = buckets.iter().flatten().copied().collect();
    assert_eq!(order, (0..sizes.len()).rev().collect::<Vec<_>>(), "reverse parameter order");
    for b in buckets {
        let bytes: usize = b.iter().map(|&i| sizes[i]).sum();
        assert!(b.len() == 1 || bytes <= 2048, "bucket {b:?} holds {bytes} bytes");
    }
    assert!(again.contains("already has a post-accumulate-grad hook"), "{again}");
    assert_eq!(*third, sizes.len(), "a cap of 0: a bucket a parameter");
}

#[test]
fn at_world_size_one_nothing_is_sent_and_gradients_are_kept() {
    let out = on_local_ranks(1, Duration::from_secs(30), |g| {
        let (vs, loss) = network(0);
        let params = sorted(&vs);
        let reducer = GradReducer::new(g.clone(), &params, 1 << 10).unwrap();
        reducer.arm();
        loss.backward();
        let means = [loss.detach()];
        let mut flags = [1.0f32];
        let early = reducer.finish(&means, &mut flags).unwrap();
        let grads: Vec<Vec<f32>> = params.iter().map(|(_, p)| values(&p.grad())).collect();
        (early, flags[0], grads)
    })
    .unwrap();
    let (vs, loss) = network(0);
    loss.backward();
    let want: Vec<Vec<f32>> = sorted(&vs).iter().map(|(_, p)| values(&p.grad())).collect();
    assert_eq!(out[0], (0, 1.0, want));
}
