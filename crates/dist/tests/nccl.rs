//! NCCL through c10d's ProcessGroupNCCL on a machine with a CUDA device (`--features nccl`;
//! ignored elsewhere: run with `--ignored` where a GPU is at hand, as `cargo xtask gpu-check`
//! does). World size 1: one GPU cannot hold two NCCL ranks.
#![cfg(feature = "nccl")]
use std::time::Duration;

use selfsup_dist::{all_gather_with_grad, average_gradients, free_port, init_for, World};
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "needs a CUDA device"]
fn nccl_collectives_on_one_gpu() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let world = World {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: free_port().unwrap(),
    };
    let dev = Device::Cuda(0);
    let g = init_for(&world, Duration::from_secs(60), dev).unwrap();
    assert_eq!(g.backend(), "nccl");
    let t = Tensor::arange(6, (Kind::Float, dev)).view([2, 3]);
    g.all_reduce_sum(&t).unwrap();
    let strided = Tensor::arange(6, (Kind::Float, dev)).view([2, 3]).tr();
    g.all_reduce_sum(&strided).unwrap();
    // Started without waiting (the reducer's buckets), then waited for.
    let started = Tensor::arange(4, (Kind::Float, dev)) * 2.0;
    let work = g.start_all_reduce_sum(&started).unwrap();
    let busy = Tensor::randn([1024, 1024], (Kind::Float, dev));
    let _ = busy.matmul(&busy);
    work.wait().unwrap();
    let gathered = g.all_gather(&t).unwrap();
    g.broadcast(&t, 0).unwrap();
    let x = Tensor::ones([2, 2], (Kind::Float, dev)).set_requires_grad(true);
    let y = all_gather_with_grad(&g, &x).unwrap();
    (y * 3.0).sum(Kind::Float).backward();
    let params = vec![("w".to_string(), x.shallow_clone())];
    let mut stop = [1.0f32];
    average_gradients(g.as_ref(), &params, &[], &mut stop).unwrap();
    g.barrier().unwrap();
    g.finish().unwrap();
    let cpu = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1).to_device(Device::Cpu)).unwrap();
    assert_eq!(cpu(&t), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(cpu(&strided), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(cpu(&gathered), cpu(&t));
    assert_eq!(cpu(&started), vec![0.0, 2.0, 4.0, 6.0]);
    assert_eq!(cpu(&x.grad()), vec![3.0; 4]);
    assert_eq!(stop, [1.0]);
}
