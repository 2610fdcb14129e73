pub mod compile;
pub mod executor;
pub mod kernel;
pub mod launch;
