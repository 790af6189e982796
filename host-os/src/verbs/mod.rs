//! The verbs of `plinth-host`, one module each.

pub mod guest;
pub mod topology;
