//! The store-backed collectives across ranks that are threads of this process, each with its
//! own connection to a c10d `TCPStore` served by rank 0 (as separate processes would have).
use std::sync::Arc;
use std::time::Duration;

use selfsup_dist::{
    all_gather_with_grad, all_reduce_sum_with_grad, average_gradients, free_port, init,
    on_local_ranks, Collectives, World,
};
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// Runs `f(group)` on `n` ranks, each in a thread, and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    n: usize,
    f: impl Fn(&Arc<dyn Collectives>) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    on_local_ranks(n, Duration::from_secs(30), f).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
}

#[test]
fn all_reduce_gather_broadcast_and_barrier_agree_on_every_rank() {
    let out = on_ranks(3, |g| {
        let r = g.rank() as f32;
        let t = Tensor::from_slice(&[r, 10.0 * r, 0.5]).view([3, 1]);
        g.all_reduce_sum(&t).unwrap();
        let ints = Tensor::from_slice(&[g.rank() as i64 + 1]);
        g.all_reduce_sum(&ints).unwrap();
        // Rank r sends r + 1 rows.
        let rows =
            Tensor::full([g.rank() as i64 + 1, 2], g.rank() as f64, (Kind::Float, Device::Cpu));
        let gathered = g.all_gather(&rows).unwrap();
        let b = Tensor::from_slice(&[g.rank() as f32; 4]);
        g.broadcast(&b, 2).unwrap();
        g.barrier().unwrap();
        (values(&t), i64::try_from(&ints).unwrap(), gathered.size(), values(&gathered), values(&b))
    });
    for (rank, (sum, ints, gsize, gathered, b)) in out.iter().enumerate() {
        assert_eq!(sum, &vec![3.0, 30.0, 1.5], "rank {rank}");
        assert_eq!(*ints, 6, "rank {rank}");
        assert_eq!(gsize, &vec![6, 2], "rank {rank}");
        assert_eq!(gathered, &vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
        assert_eq!(b, &vec![2.0; 4], "rank {rank}");
    }
}

#[test]
fn sums_are_the_same_bits_on_every_rank() {
    // Values whose float sum depends on the order: every rank adds in rank order.
    let out = on_ranks(4, |g| {
        let t = Tensor::from_slice(&[1e8f32, 1.0, -1e8, 3.25]).roll([g.rank() as i64], [0]);
        let t = t * (g.rank() as f64 + 0.1);
        g.all_reduce_sum(&t).unwrap();
        values(&t).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    });
    assert!(out.iter().all(|v| v == &out[0]), "{out:?}");
}

#[test]
fn a_rank_with_another_shape_is_named() {
    let out = on_ranks(2, |g| {
        let t = Tensor::zeros([2 + g.rank() as i64], (Kind::Float, Device::Cpu));
        g.all_reduce_sum(&t).map_err(|e| e.to_string())
    });
    let e = out[0].as_ref().unwrap_err();
    assert!(
        e.contains("all_reduce on rank 0 of 2: rank 1 sent Float [3], this rank has Float [2]"),
        "{e}"
    );
}

#[test]
fn two_ranks_at_half_the_batch_average_to_the_full_batch_gradient() {
    // A network without batch norm: the mean loss over B is the mean of the two halves' means.
    fn grads(x: &Tensor, y: &Tensor, group: Option<&Arc<dyn Collectives>>) -> Vec<Vec<f32>> {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "a", 6, 8, Default::default()))
            .add_fn(|t| t.relu())
            .add(nn::linear(vs.root() / "b", 8, 3, Default::default()));
        // Fixed weights, not libtorch's global generator: the ranks build their networks in
        // threads at the same time, and seeding that generator in each raced (a rank drew
        // the other's numbers now and then, and its gradients were another network's).
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                let n = v.numel() as i64;
                let fill = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37
                    + name.len() as f64)
                    .sin()
                    * 0.5;
                v.copy_(&fill.view_as(&v));
            }
        });
        let loss = net.forward(x).cross_entropy_for_logits(y);
        loss.backward();
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(g) = group {
            let mut flags = [g.rank() as f32, 1.0];
            average_gradients(g.as_ref(), &params, &[], &mut flags).unwrap();
            assert_eq!(flags, [1.0, 2.0], "flags come back summed");
        }
        params.iter().map(|(_, p)| values(&p.grad())).collect()
    }
    tch::manual_seed(7);
    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 2, 1]);
    let full = grads(&x, &y, None);
    // Tensors are not `Sync`: the ranks rebuild their halves from the values.
    let (xs, ys) = (values(&x), Vec::<i64>::try_from(&y).unwrap());
    let out = on_ranks(2, move |g| {
        let r = g.rank();
        let x = Tensor::from_slice(&xs[24 * r..24 * (r + 1)]).view([4, 6]);
        let y = Tensor::from_slice(&ys[4 * r..4 * (r + 1)]);
        grads(&x, &y, Some(g))
    });
    for (rank, got) in out.iter().enumerate() {
        for (a, b) in got.iter().flatten().zip(full.iter().flatten()) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "rank {rank}: {a} vs {b}");
        }
    }
    assert_eq!(out[0], out[1], "both ranks hold the same averaged gradients");
}

#[test]
fn no_server_is_an_error_naming_the_address() {
    let port = free_port().unwrap();
    let world = World {
        rank: 1,
        world_size: 2,
        local_rank: 1,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    };
    let e = init(&world, Duration::from_millis(1500)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("store 127.0.0.1:{port}: ")), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn gathering_with_gradient_hands_each_rank_the_gradient_of_its_rows_from_every_loss() {
    // Rank r holds x_r = (r + 1) · [1, 2] (one row) and its loss is Σ c_r ⊙ gather(x), with
    // c_r = (r + 1) · [[1, 10], [100, 1000], [1e4, 1e5]]: rank s's rows get Σ_r c_r[s].
    let out = on_ranks(3, |g| {
        let r = g.rank() as f64;
        let x =
            (Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]) * (r + 1.0)).set_requires_grad(true);
        let all = all_gather_with_grad(g, &x).unwrap();
        let c =
            Tensor::from_slice(&[1.0f32, 10.0, 100.0, 1000.0, 1e4, 1e5]).view([3, 2]) * (r + 1.0);
        let loss = (&all * &c).sum(Kind::Float);
        loss.backward();
        // A sum whose backward sums too: d/dx_r Σ_ranks (Σ y) over 3 ranks is 3 per element.
        let z = Tensor::from_slice(&[r as f32]).set_requires_grad(true);
        all_reduce_sum_with_grad(g, &z).unwrap().sum(Kind::Float).backward();
        (values(&all), values(&x.grad()), values(&loss), values(&z.grad()))
    });
    let scale = 1.0 + 2.0 + 3.0;
    for (rank, (all, grad, loss, zgrad)) in out.iter().enumerate() {
        assert_eq!(all, &vec![1.0, 2.0, 2.0, 4.0, 3.0, 6.0], "rank {rank}: rows in rank order");
        let c = [[1.0f32, 10.0], [100.0, 1000.0], [1e4, 1e5]][rank];
        assert_eq!(grad, &vec![scale * c[0], scale * c[1]], "rank {rank}");
        let expected = (1.0 + 20.0 + 200.0 + 4000.0 + 3e4 + 6e5) * (rank as f32 + 1.0);
        assert_eq!(loss, &vec![expected], "rank {rank}: its own loss");
        assert_eq!(zgrad, &vec![3.0], "rank {rank}");
    }
}

#[test]
fn tensors_larger_than_the_stores_value_limit_travel_in_pieces() {
    // 3 M floats (12 MB) a rank: over c10d's 8 MiB limit on one value.
    let out = on_ranks(2, |g| {
        let n = 3_000_000;
        let t = Tensor::arange(n, (Kind::Float, Device::Cpu)) + g.rank() as f64;
        g.all_reduce_sum(&t).unwrap();
        let gathered = g.all_gather(&t.narrow(0, 0, 5)).unwrap();
        (t.narrow(0, n - 2, 2).iter::<f64>().unwrap().collect::<Vec<_>>(), values(&gathered))
    });
    for (rank, (tail, gathered)) in out.iter().enumerate() {
        let n = 3_000_000f64;
        assert_eq!(tail, &vec![2.0 * (n - 2.0) + 1.0, 2.0 * (n - 1.0) + 1.0], "rank {rank}");
        assert_eq!(gathered, &vec![1.0, 3.0, 5.0, 7.0, 9.0, 1.0, 3.0, 5.0, 7.0, 9.0]);
    }
}
