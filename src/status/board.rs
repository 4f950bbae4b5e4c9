//! The board of the apps this process serves and their statuses, as the ops
//! endpoint, the console and the fleet read it (a fleet adds and removes
//! apps on reload).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::worker::WorkerStatus;

/// The apps this process serves and their statuses, as the ops endpoint
/// reads them (a fleet adds and removes apps on reload).
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<RwLock<BTreeMap<u64, Arc<WorkerStatus>>>>);

impl StatusBoard {
    pub fn of(sdkappid: u64, status: Arc<WorkerStatus>) -> Self {
        let board = Self::default();
        board.insert(sdkappid, status);
        board
    }

    pub fn insert(&self, sdkappid: u64, status: Arc<WorkerStatus>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sdkappid, status);
    }

    pub fn remove(&self, sdkappid: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sdkappid);
    }

    pub fn apps(&self) -> Vec<(u64, Arc<WorkerStatus>)> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(app, status)| (*app, status.clone()))
            .collect()
    }
}
