#![no_std]
//! Empty library target: it lets probe-user name this crate as a build dependency, so
//! cargo rebuilds the kernel programs (built by aya-build in probe-user/build.rs)
//! whenever their sources change.
