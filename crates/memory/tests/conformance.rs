//! The conformance suite of the storage ports, run against the memory store: one fresh store per check.

#![allow(missing_docs)]

use users_memory::{ManualClock, MemoryStore};

users_testkit::conformance_tests!(async { (MemoryStore::new(ManualClock::starting_now()), ()) });
