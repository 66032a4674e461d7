//! Integration tests: the real `strangle` binary on free ports against real HTTP backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test binary exports nothing: `pub` here only shares fixtures between the test files.
#![allow(unreachable_pub)]

mod admin;
mod auth;
mod bad_input;
mod bypass;
mod capture;
mod compression;
mod dashboard;
mod drain;
mod emf;
mod engines;
mod fallback;
mod faults;
mod fleet;
mod history;
mod http2;
mod inventory;
mod invoke;
mod lambda;
mod layout;
mod lifecycle;
mod limits;
mod metrics;
mod otlp_logs;
mod plugins;
mod policies;
mod reload;
mod resolve;
mod rollout;
mod routing;
mod series;
mod shadow;
mod sidecar;
mod split;
mod support;
mod tls;
mod tracing;
mod upgrade;
