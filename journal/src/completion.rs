//! completion: how an append hears back from the writer task — the [`Completion`] it awaits, the
//! [`Failure`] a failed group hands every entry it covered, and [`WakeOnce`], the one-shot sleep
//! both sides of the write path use.
//!
//! Owns resolving a waiter exactly once. It must never decide what failed or when (the writer
//! task does), and never hold a `RefCell` borrow across an await.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::JournalError;

/// Why a group commit failed; cloned to every entry it covered.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub stage: &'static str,
    pub file: String,
    pub kind: std::io::ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn from_error(error: &JournalError) -> Self {
        match error {
            JournalError::Io {
                stage,
                file,
                source,
            } => Self {
                stage,
                file: file.clone(),
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Self {
                stage: "write",
                file: String::new(),
                kind: std::io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    /// The error for an entry that was in the failed batch (`in_flight`) or merely queued.
    fn to_error(&self, in_flight: bool) -> JournalError {
        if in_flight {
            JournalError::Io {
                stage: self.stage,
                file: self.file.clone(),
                source: std::io::Error::new(self.kind, self.message.clone()),
            }
        } else {
            JournalError::Poisoned(self.describe())
        }
    }

    pub fn describe(&self) -> String {
        format!("{} on {}: {}", self.stage, self.file, self.message)
    }
}

/// A one-shot completion for one entry (or one flush request), woken by the writer task.
#[derive(Default)]
pub(crate) struct Completion {
    result: RefCell<Option<Result<(), (Failure, bool)>>>,
    waker: RefCell<Option<Waker>>,
}

impl Completion {
    pub fn resolve(&self, result: Result<(), (Failure, bool)>) {
        let mut slot = self.result.borrow_mut();
        if slot.is_none() {
            *slot = Some(result);
        }
        drop(slot);
        self.wake();
    }

    pub fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn is_done(&self) -> bool {
        self.result.borrow().is_some()
    }

    /// Waits until the writer resolves this completion. Dropping the future changes nothing:
    /// the entry is written all the same, and nobody else waits on this completion.
    pub async fn wait(&self) -> Result<(), JournalError> {
        loop {
            if let Some(result) = self.result.borrow_mut().take() {
                return result.map_err(|(failure, in_flight)| failure.to_error(in_flight));
            }
            let register = |waker: Waker| {
                if self.is_done() {
                    return false;
                }
                *self.waker.borrow_mut() = Some(waker);
                true
            };
            WakeOnce {
                register: &register,
                registered: false,
            }
            .await;
        }
    }
}

/// Pending until woken once (a registered waker fired); the caller re-checks its condition.
pub(crate) struct WakeOnce<'a> {
    pub register: &'a dyn Fn(Waker) -> bool,
    pub registered: bool,
}

impl Future for WakeOnce<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        // `register` returns false when the condition already holds (no need to sleep).
        if (self.register)(cx.waker().clone()) {
            self.registered = true;
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}
