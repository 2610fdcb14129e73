//! Which device holds which layer. Pure arithmetic on byte counts, so it is tested without GPUs.

use crate::error::{Error, Result};

/// Bytes a model needs, by part.
#[derive(Clone, Copy, Debug)]
pub struct ModelBytes {
    /// One decoder layer's weights plus its share of the KV cache.
    pub layer: usize,
    pub n_layers: usize,
    /// Token embeddings (on the device of the first layer).
    pub embed: usize,
    /// Final norm and lm_head (on the device of the last layer), a copy of the embeddings when
    /// tied and on another device.
    pub head: usize,
}

/// Layer `i` runs on `layer_devices[i]`; the embedding sits with layer 0, the head with the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub layer_devices: Vec<usize>,
}

impl Placement {
    pub fn embed_device(&self) -> usize {
        self.layer_devices[0]
    }

    pub fn head_device(&self) -> usize {
        *self.layer_devices.last().unwrap_or(&0)
    }

    /// Consecutive layers on one device: (device, first layer, layer count), in order.
    pub fn segments(&self) -> Vec<(usize, usize, usize)> {
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        for (i, &d) in self.layer_devices.iter().enumerate() {
            match out.last_mut() {
                Some(seg) if seg.0 == d => seg.2 += 1,
                _ => out.push((d, i, 1)),
            }
        }
        out
    }

    /// Bytes each device of `devices` holds under this placement.
    pub fn bytes(&self, devices: &[usize], b: &ModelBytes) -> Vec<usize> {
        devices
            .iter()
            .map(|&d| {
                let layers = self.layer_devices.iter().filter(|&&x| x == d).count();
                layers * b.layer
                    + if self.embed_device() == d { b.embed } else { 0 }
                    + if self.head_device() == d { b.head } else { 0 }
            })
            .collect()
    }

    /// Contiguous layer ranges, one per device in order, sized so each device's share of the
    /// model matches its share of the free memory.
    pub fn balanced(devices: &[usize], free: &[usize], b: &ModelBytes) -> Result<Self> {
        if devices.is_empty() || devices.len() != free.len() {
            return Err(Error::InvalidArgument("devices must list at least one device".into()));
        }
        let total = b.n_layers * b.layer + b.embed + b.head;
        let free_sum: usize = free.iter().sum::<usize>().max(1);
        let mut layer_devices = Vec::with_capacity(b.n_layers);
        for (j, (&d, &cap)) in devices.iter().zip(free).enumerate() {
            let left = b.n_layers - layer_devices.len();
            let count = if j + 1 == devices.len() {
                left
            } else {
                let share = (total as f64 * cap as f64 / free_sum as f64) as usize;
                let fixed = if j == 0 { b.embed } else { 0 };
                // Round to the nearest whole layer.
                let fit = (share.saturating_sub(fixed) + b.layer / 2) / b.layer.max(1);
                fit.min(left)
            };
            layer_devices.extend(std::iter::repeat_n(d, count));
        }
        let placement = Placement { layer_devices };
        placement.check(devices, free, b)?;
        Ok(placement)
    }

    /// One device per layer, as given.
    pub fn explicit(
        layer_devices: Vec<usize>,
        devices: &[usize],
        free: &[usize],
        b: &ModelBytes,
    ) -> Result<Self> {
        if layer_devices.len() != b.n_layers {
            return Err(Error::InvalidArgument(format!(
                "layer_devices lists {} devices; the model has {} layers",
                layer_devices.len(),
                b.n_layers
            )));
        }
        if let Some(d) = layer_devices.iter().find(|d| !devices.contains(d)) {
            return Err(Error::InvalidArgument(format!(
                "layer_devices names device {d}, not one of {devices:?}"
            )));
        }
        let placement = Placement { layer_devices };
        placement.check(devices, free, b)?;
        Ok(placement)
    }

    fn check(&self, devices: &[usize], free: &[usize], b: &ModelBytes) -> Result<()> {
        for ((d, need), have) in devices.iter().zip(self.bytes(devices, b)).zip(free) {
            if need > *have {
                return Err(Error::OutOfMemory(format!(
                    "device {d} needs about {need} bytes for its layers but {have} bytes are free; \
                     lower max_seq_len, add devices or free memory"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: usize = 1 << 30;

    fn qwen3_8b() -> ModelBytes {
        // 100 MB of AWQ weights and 200 MB of KV per layer; 1.24 GB embeddings and lm_head.
        ModelBytes { layer: 300 << 20, n_layers: 36, embed: 1_244_659_712, head: 1_244_659_712 }
    }

    #[test]
    fn two_equal_devices_split_in_half() {
        let p = Placement::balanced(&[0, 1], &[80 * GB, 80 * GB], &qwen3_8b()).unwrap();
        assert_eq!(p.layer_devices, [vec![0; 18], vec![1; 18]].concat());
        assert_eq!(p.segments(), vec![(0, 0, 18), (1, 18, 18)]);
        let bytes = p.bytes(&[0, 1], &qwen3_8b());
        assert_eq!(bytes[0], bytes[1]);
        assert_eq!(p.embed_device(), 0);
        assert_eq!(p.head_device(), 1);
    }

    #[test]
    fn more_free_memory_takes_more_layers() {
        let b = qwen3_8b();
        let p = Placement::balanced(&[3, 5], &[30 * GB, 10 * GB], &b).unwrap();
        let on3 = p.layer_devices.iter().filter(|&&d| d == 3).count();
        assert!((28..=30).contains(&on3), "{on3} layers on the larger device");
        let bytes = p.bytes(&[3, 5], &b);
        assert!(bytes[0] <= 30 * GB && bytes[1] <= 10 * GB);
    }

    #[test]
    fn one_device_holds_everything() {
        let b = qwen3_8b();
        let p = Placement::balanced(&[2], &[80 * GB], &b).unwrap();
        assert_eq!(p.layer_devices, vec![2; 36]);
        assert_eq!(p.segments(), vec![(2, 0, 36)]);
        assert_eq!(p.bytes(&[2], &b)[0], 36 * b.layer + b.embed + b.head);
    }

    #[test]
    fn alternating_explicit_placement_has_many_segments() {
        let layers: Vec<usize> = (0..36).map(|i| (i / 2) % 2).collect();
        let p = Placement::explicit(layers, &[0, 1], &[80 * GB, 80 * GB], &qwen3_8b()).unwrap();
        assert_eq!(p.segments().len(), 18);
        assert_eq!(p.segments()[1], (1, 2, 2));
    }

    #[test]
    fn errors_name_the_problem() {
        let b = qwen3_8b();
        let e = Placement::explicit(vec![0; 35], &[0], &[80 * GB], &b).unwrap_err().to_string();
        assert!(e.contains("35") && e.contains("36 layers"), "{e}");
        let e = Placement::explicit(vec![4; 36], &[0, 1], &[80 * GB; 2], &b).unwrap_err().to_string();
        assert!(e.contains("device 4"), "{e}");
        let e = Placement::balanced(&[0, 1], &[4 * GB, 4 * GB], &b).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)) && e.to_string().contains("device"), "{e}");
        assert!(Placement::balanced(&[], &[], &b).is_err());
    }
}
