//! MoCo's queue of keys (official `_dequeue_and_enqueue`): a `(K, D)` tensor of L2-normalised
//! keys and a pointer to the oldest row. Enqueuing N keys overwrites the N oldest rows, which
//! dequeues them; the pointer moves by N modulo K. Unlike the official code, N need not divide
//! K: the write wraps around the end.
use selfsup_contrastive::loss::l2_normalize;
use selfsup_contrastive::ContrastiveError;
use tch::{Device, Kind, Tensor};

/// The queue of negative keys.
#[derive(Debug)]
pub struct KeyQueue {
    keys: Tensor,
    ptr: i64,
}

impl KeyQueue {
    /// A queue of `size` random unit vectors of dimension `dim` (the official initialisation:
    /// Gaussian, normalised), drawn from libtorch's seeded generator.
    pub fn new(size: usize, dim: i64, device: Device) -> Result<Self, ContrastiveError> {
        if size == 0 || dim <= 0 {
            return Err(ContrastiveError::Config(format!(
                "moco queue needs size >= 1 and dim >= 1, got size {size} and dim {dim}"
            )));
        }
        let keys = l2_normalize(&Tensor::randn([size as i64, dim], (Kind::Float, device)));
        Ok(KeyQueue { keys, ptr: 0 })
    }

    /// The keys.
    ///
    /// # Shapes
    /// `(K, D)`.
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    /// Index of the row the next key goes to (the oldest key).
    pub fn ptr(&self) -> i64 {
        self.ptr
    }

    /// Number of keys K.
    pub fn len(&self) -> i64 {
        self.keys.size()[0]
    }

    /// Always false (a queue has at least one row).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes `keys` (detached, as f32) over the oldest rows and advances the pointer. When
    /// more than K keys come at once only the last K are kept.
    ///
    /// # Shapes
    /// `keys`: `(N, D)`.
    pub fn enqueue(&mut self, keys: &Tensor) -> Result<(), ContrastiveError> {
        let (k, d) = (self.len(), self.keys.size()[1]);
        let size = keys.size();
        if size.len() != 2 || size[1] != d {
            return Err(ContrastiveError::Shape(format!("keys must be (N, {d}), got {size:?}")));
        }
        let n = size[0];
        let (keys, start) = if n > k {
            (keys.narrow(0, n - k, k), (self.ptr + n - k) % k)
        } else {
            (keys.shallow_clone(), self.ptr)
        };
        let m = keys.size()[0];
        let idx = (Tensor::arange(m, (Kind::Int64, self.keys.device())) + start).remainder(k);
        let src = keys.detach().to_kind(Kind::Float).to_device(self.keys.device());
        tch::no_grad(|| {
            let _ = self.keys.index_copy_(0, &idx, &src);
        });
        self.ptr = (self.ptr + n) % k;
        Ok(())
    }

    /// State for checkpoints: `queue` `(K, D)` and `queue_ptr` (scalar i64).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("queue".to_string(), self.keys.copy()),
            ("queue_ptr".to_string(), Tensor::from(self.ptr)),
        ]
    }

    /// Restores [`KeyQueue::state`]; the queue keeps its size.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), ContrastiveError> {
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| ContrastiveError::State(format!("`{name}` missing")))
        };
        let keys = get("queue")?;
        if keys.size() != self.keys.size() {
            return Err(ContrastiveError::State(format!(
                "`queue` has shape {:?}, expected {:?}",
                keys.size(),
                self.keys.size()
            )));
        }
        let ptr = get("queue_ptr")?.int64_value(&[]);
        if !(0..self.len()).contains(&ptr) {
            return Err(ContrastiveError::State(format!(
                "`queue_ptr` {ptr} outside 0..{}",
                self.len()
            )));
        }
        tch::no_grad(|| self.keys.copy_(&keys.to_kind(Kind::Float).to_device(self.keys.device())));
        self.ptr = ptr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: i64, start: f32) -> Tensor {
        Tensor::arange(n, (Kind::Float, Device::Cpu)).unsqueeze(1).repeat([1, 2]) + start as f64
    }

    fn col0(q: &KeyQueue) -> Vec<f64> {
        (0..q.len()).map(|i| q.keys().double_value(&[i, 0])).collect()
    }

    #[test]
    fn pointer_wraps_and_overwrites_the_oldest_rows() {
        let mut q = KeyQueue::new(6, 2, Device::Cpu).unwrap();
        let init = col0(&q);
        q.enqueue(&rows(4, 100.0)).unwrap();
        assert_eq!(q.ptr(), 4);
        assert_eq!(col0(&q)[..4], [100.0, 101.0, 102.0, 103.0]);
        assert_eq!(col0(&q)[4..], init[4..]);
        q.enqueue(&rows(4, 200.0)).unwrap();
        assert_eq!(q.ptr(), 2);
        assert_eq!(col0(&q), vec![202.0, 203.0, 102.0, 103.0, 200.0, 201.0]);
        // More keys than the queue holds: only the last K survive, in ring order.
        q.enqueue(&rows(8, 300.0)).unwrap();
        assert_eq!(q.ptr(), 4);
        assert_eq!(col0(&q), vec![304.0, 305.0, 306.0, 307.0, 302.0, 303.0]);
        assert!(q.enqueue(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))).is_err());
    }

    #[test]
    fn state_round_trip() {
        let mut a = KeyQueue::new(5, 3, Device::Cpu).unwrap();
        a.enqueue(&Tensor::ones([3, 3], (Kind::Float, Device::Cpu))).unwrap();
        let mut b = KeyQueue::new(5, 3, Device::Cpu).unwrap();
        b.load_state(&a.state()).unwrap();
        assert_eq!(b.ptr(), 3);
        assert!(b.keys().equal(a.keys()));
        let mut c = KeyQueue::new(4, 3, Device::Cpu).unwrap();
        assert!(c.load_state(&a.state()).is_err());
    }
}
