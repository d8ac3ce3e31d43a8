//! Helpers for the end-to-end tests: the lab fixture and commands run in its pods.
