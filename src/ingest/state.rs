//! What the endpoint's handlers share: the apps served and where their jobs
//! go, the tokens, the broker link and the ledger.

use std::collections::{HashMap, HashSet};

use tokio::sync::Mutex;

use crate::broker::Topology;
use crate::ledger::Ledger;
use crate::pipeline::CallRules;

use super::publisher::Publisher;
use super::tokens::Tokens;

/// The job body's JSON Schema, served at `/v1/job.schema.json` (the OpenAPI
/// document holds it too, as its `Job` schema).
pub const JOB_SCHEMA: &str = include_str!("../../schema/job.schema.json");

/// The OpenAPI 3.1 document of the endpoint, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi/ingest.json");

/// Where an app's jobs go, and what a call of them may hold.
#[derive(Debug, Clone)]
pub struct AppRoute {
    pub topology: Topology,
    pub rules: CallRules,
}

/// Everything the endpoint's handlers share.
pub struct Ingest {
    pub apps: HashMap<u64, AppRoute>,
    pub tokens: Tokens,
    pub publisher: Publisher,
    /// For idempotency keys and job lookups; without it a repeated key is
    /// published again (the worker's ledger, if any, still sends it once).
    pub ledger: Option<Ledger>,
    /// Apps whose queues this process declared.
    pub(super) declared: Mutex<HashSet<u64>>,
}

impl Ingest {
    pub fn new(
        apps: HashMap<u64, AppRoute>,
        tokens: Tokens,
        publisher: Publisher,
        ledger: Option<Ledger>,
    ) -> Self {
        Self {
            apps,
            tokens,
            publisher,
            ledger,
            declared: Mutex::default(),
        }
    }
}
