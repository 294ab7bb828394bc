//! colex-agent as a library: the controller session and the silo runtime.

pub mod blobs;
pub mod config;
pub mod controllers;
pub mod dns;
pub mod host;
pub mod local;
pub mod mesh;
pub mod metadata;
pub mod runtime;
pub mod session;
