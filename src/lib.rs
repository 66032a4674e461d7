//! strangle: an edge proxy for strangler-fig migrations, built on Pingora.
//!
//! Every request passes the same pipeline whichever side serves it: match route → choose side
//! (weighted, sticky) → serve → log. The README's Layout section says what each part of the
//! repository holds; its What it does today (bad-input policy) and Using it (CLI verbs)
//! sections and the annotated `config/strangle.toml` (every config key) are the contracts.

pub mod admin;
pub mod auth;
pub mod capture;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod edit;
pub mod exchange;
pub mod fleet;
pub mod handover;
pub mod history;
pub mod http1;
pub mod inventory;
pub mod lambda;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod services;
pub mod shadow;
pub mod split;
pub mod state;
pub mod stats;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod upstream;
