//! Greylisting (in progress).
