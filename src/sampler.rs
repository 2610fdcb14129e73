//! Sampling options with transformers' names and meanings, validated here, and their device form.
//!
//! The logits processors run in transformers' order: repetition_penalty, then (when sampling)
//! temperature, top_k, top_p and min_p, then a draw from the softmax of what is left. Greedy
//! decoding (`do_sample: false`) takes the argmax after the repetition penalty.

use std::hash::{BuildHasher, Hasher};

use crate::error::{Error, Result};

/// How the next token is chosen, in transformers' terms.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Draw from the processed distribution; false is greedy decoding (the other sampling
    /// options are then ignored, except `repetition_penalty`).
    pub do_sample: bool,
    /// Logits are divided by this (> 0) before top_k / top_p / min_p.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (ties at the k-th value kept too); 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to `top_p`, in (0, 1];
    /// 1 disables.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the largest, in [0, 1]; 0 disables.
    pub min_p: f32,
    /// Logits of tokens already in the sequence (prompt and generated) are divided by this when
    /// positive and multiplied when negative; > 0, 1 disables.
    pub repetition_penalty: f32,
    /// The random stream: the same seed, prompt and options give the same tokens. None draws a
    /// fresh seed.
    pub seed: Option<u64>,
}

impl Default for SamplingOptions {
    /// Greedy decoding; the sampling values are transformers' defaults (top_k 50).
    fn default() -> Self {
        SamplingOptions {
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

/// Which kernel picks the token: the argmax kernel, or the sampling kernel driven by the
/// parameters in device memory (which also covers greedy decoding with a repetition penalty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sampler {
    Greedy = 0,
    Sampling = 1,
}

/// Number of 32-bit words of the device parameter block (kernels/sampling.cu `SampleParams`).
pub const PARAM_WORDS: usize = 8;

impl SamplingOptions {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Errors name the argument and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        let t = self.temperature;
        if !(t.is_finite() && t > 0.0) {
            return bad(format!("temperature must be a finite number > 0, got {t}"));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {p}"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return bad(format!("min_p must be in [0, 1], got {m}"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return bad(format!("repetition_penalty must be a finite number > 0, got {r}"));
        }
        if self.top_k > i32::MAX as usize {
            return bad(format!("top_k must be at most {}, got {}", i32::MAX, self.top_k));
        }
        Ok(())
    }

    /// The kernel that implements these options.
    pub fn sampler(&self) -> Sampler {
        if self.do_sample || self.repetition_penalty != 1.0 {
            Sampler::Sampling
        } else {
            Sampler::Greedy
        }
    }

    /// The seed to use: the given one, else a fresh one from the process's random hasher keys.
    pub fn resolved_seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.finish()
        })
    }

    /// The device parameter block: temperature, top_p, min_p, repetition_penalty (f32 bits),
    /// top_k (0 when it keeps everything of a `vocab`-sized distribution), do_sample, seed low
    /// and high words.
    pub fn device_params(&self, vocab: usize, seed: u64) -> [u32; PARAM_WORDS] {
        let top_k = if self.top_k >= vocab { 0 } else { self.top_k as u32 };
        [
            self.temperature.to_bits(),
            self.top_p.to_bits(),
            self.min_p.to_bits(),
            self.repetition_penalty.to_bits(),
            top_k,
            self.do_sample as u32,
            seed as u32,
            (seed >> 32) as u32,
        ]
    }
}

/// Words of the presence bitmap of a `vocab`-sized vocabulary (one bit per token).
pub fn presence_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// The presence bitmap with the bits of `ids` set.
pub fn presence_bitmap(vocab: usize, ids: &[u32]) -> Vec<u32> {
    let mut bits = vec![0u32; presence_words(vocab)];
    for &t in ids {
        if (t as usize) < vocab {
            bits[t as usize / 32] |= 1 << (t % 32);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(o: SamplingOptions) -> String {
        match o.validate() {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_greedy_and_valid() {
        let o = SamplingOptions::default();
        o.validate().unwrap();
        assert_eq!(o.sampler(), Sampler::Greedy);
        let penalized = SamplingOptions { repetition_penalty: 1.2, ..o.clone() };
        assert_eq!(penalized.sampler(), Sampler::Sampling);
        assert_eq!(SamplingOptions { do_sample: true, ..o }.sampler(), Sampler::Sampling);
    }

    #[test]
    fn bad_values_name_the_argument() {
        let o = SamplingOptions::default();
        for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(err(SamplingOptions { temperature: t, ..o.clone() }).starts_with("temperature"));
        }
        for p in [0.0, -0.1, 1.01, f32::NAN] {
            assert!(err(SamplingOptions { top_p: p, ..o.clone() }).starts_with("top_p"));
        }
        for m in [-0.1, 1.5, f32::NAN] {
            assert!(err(SamplingOptions { min_p: m, ..o.clone() }).starts_with("min_p"));
        }
        for r in [0.0, -2.0, f32::NAN, f32::INFINITY] {
            assert!(
                err(SamplingOptions { repetition_penalty: r, ..o.clone() }).starts_with("repetition_penalty")
            );
        }
        assert!(err(SamplingOptions { top_p: 1.5, ..o.clone() }).contains("1.5"));
        SamplingOptions { top_p: 1.0, min_p: 1.0, temperature: 1e-30, ..o }.validate().unwrap();
    }

    #[test]
    fn device_params_layout() {
        let o = SamplingOptions {
            do_sample: true,
            temperature: 0.5,
            top_k: 20,
            top_p: 0.9,
            min_p: 0.05,
            repetition_penalty: 1.1,
            seed: Some(7),
        };
        let p = o.device_params(1000, 0x1234_5678_9abc_def0);
        assert_eq!(f32::from_bits(p[0]), 0.5);
        assert_eq!(f32::from_bits(p[1]), 0.9);
        assert_eq!(f32::from_bits(p[2]), 0.05);
        assert_eq!(f32::from_bits(p[3]), 1.1);
        assert_eq!(&p[4..], &[20, 1, 0x9abc_def0, 0x1234_5678]);
        // A top_k covering the vocabulary keeps everything.
        assert_eq!(SamplingOptions { top_k: 1000, ..o }.device_params(1000, 0)[4], 0);
    }

    #[test]
    fn seeds() {
        let o = SamplingOptions { seed: Some(42), ..Default::default() };
        assert_eq!(o.resolved_seed(), 42);
        let a = SamplingOptions::default().resolved_seed();
        let b = SamplingOptions::default().resolved_seed();
        assert_ne!(a, b);
    }

    #[test]
    fn bitmap() {
        let b = presence_bitmap(70, &[0, 31, 32, 69, 69, 500]);
        assert_eq!(b, vec![1 | 1 << 31, 1, 1 << 5]);
    }
}
