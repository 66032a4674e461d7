//! A reload in progress, marked for `/status` while it runs.

use std::sync::Mutex;
use std::time::SystemTime;

/// Marks a reload as running while it lives.
pub(super) struct Running<'a>(&'a Mutex<Option<SystemTime>>);

impl<'a> Running<'a> {
    pub(super) fn start(slot: &'a Mutex<Option<SystemTime>>) -> Running<'a> {
        if let Ok(mut s) = slot.lock() {
            *s = Some(SystemTime::now());
        }
        Running(slot)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            *s = None;
        }
    }
}
