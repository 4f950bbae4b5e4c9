//! Why the console could not read or act on an app's dead letters: what
//! [`super::dead`] and each pass of `walk` answer, and what the
//! pages and the API turn into a status and words.

use crate::broker::BrokerError;
use crate::ops::dlq::SelectionChanged;

/// Why the dead letters could not be read or acted on.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error("the broker cannot be reached or refused: {0}")]
    Broker(String),
    #[error("page {page} is past the last page ({pages})")]
    PageOutOfRange { page: usize, pages: usize },
    #[error(transparent)]
    Changed(#[from] SelectionChanged),
    #[error("stopped after {done} job(s): {error}")]
    Interrupted { done: usize, error: String },
}

impl From<BrokerError> for DeadError {
    fn from(e: BrokerError) -> Self {
        Self::Broker(e.to_string())
    }
}
