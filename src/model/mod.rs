pub mod awq_linear;
pub mod qwen3;
